"""The CPU demo: SFT against SSR on the real SmolLM2-135M-Instruct, from nothing to a results table.

    python train.py                            # the same as python demo.py
    python demo.py --data-dir ../shared/data   # also samples of ARC, MMLU and TruthfulQA as probes
    python demo.py --quick                     # a smoke run of a minute or two (CI runs it)

The task is generated here, so the demo needs no download: one-step word problems in GSM8K format
("Maya has 4 cookies and gets 7 more. How many cookies does Maya have now?", or "... and gives away
3."), numbers up to 9, judged like GSM8K. The base model solves about two fifths of them (README), so
SSR finds answers of its own to keep and there is room to learn. Retention is probed with a
capital-cities quiz (NQ-open style) the base model mostly knows, plus any benchmark found under
--data-dir. Both methods start from the same base model with the same examples, prompts, LoRA
settings, steps and seed: only the targets differ, which is the comparison the papers make.

Every step is cached under --out (default runs/demo): data, base evaluation, each method's targets,
training and evaluation. An interrupted demo continues; a finished one prints its table at once.
The trap avoided: train and test problems drawn from one stream can repeat; each split is drawn from
its own seed and test questions seen in train are dropped.
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

import ssr
from ssr import lora
from ssr.harness import evaluation, training
from ssr.harness.evaluation import drop_table, run_benchmarks
from ssr.harness.pipeline import run_method
from ssr.harness.recipes import LoraSettings
from ssr.harness.runfiles import check_settings, read_records, write_records
from ssr.harness.tasks import load_task
from ssr.trainer import TrainConfig

# ---------------------------------------------------------------------------------------------------------
# the data, a pure function of the seeds

NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Noah", "Zoe", "Omar", "Ava", "Ivan", "Nina",
         "Ravi", "Sara", "Kofi", "Lena", "Hugo", "Maya"]
ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "pencils", "stamps", "shells", "cards", "balloons",
         "oranges", "crayons"]

# (country, capital, other accepted spellings); well-known capitals, so a small instruct model knows many
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("China", "Beijing", "Peking"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasília", "Brasilia"),
            ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("India", "New Delhi", "Delhi"),
            ("Kenya", "Nairobi"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
            ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Turkey", "Ankara"),
            ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("Peru", "Lima"), ("Chile", "Santiago"),
            ("Cuba", "Havana"), ("the United Kingdom", "London"), ("the United States", "Washington, D.C.",
                                                                   "Washington"),
            ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Switzerland", "Bern", "Berne"),
            ("Czechia", "Prague"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Nigeria", "Abuja"),
            ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"), ("Colombia", "Bogotá", "Bogota"),
            ("Ukraine", "Kyiv", "Kiev"), ("Romania", "Bucharest"), ("Philippines", "Manila"), ("Pakistan", "Islamabad")]


def one_step(rng: random.Random) -> dict:
    """An addition or a subtraction word problem with numbers up to 9; the gold shows the step."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if rng.random() < 0.5:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return {"question": question, "answer": f"{name} has {a} + {b} = {a + b} {item}.\n#### {a + b}"}
    a = rng.randint(3, 9)
    b = rng.randint(1, a - 1)
    question = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have now?"
    return {"question": question, "answer": f"{name} has {a} - {b} = {a - b} {item} left.\n#### {a - b}"}


def word_problems(family, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """n distinct problems of one family (a function of rng), none of whose questions is in `exclude`."""
    rng, seen, out = random.Random(seed), set(exclude), []
    for _ in range(100 * n):
        row = family(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            out.append(row)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct problems")


def capitals() -> list[dict]:
    return [{"question": f"What is the capital of {country}?", "answer": list(answers)}
            for country, *answers in CAPITALS]


# ---------------------------------------------------------------------------------------------------------
# the demo

PROBE_BENCHMARKS = ("arc_easy", "arc_challenge", "mmlu", "truthfulqa_mc1")  # when found under --data-dir


@dataclass
class DemoSize:
    train: int = 128
    test: int = 64
    capitals: int = 48
    benchmark_limit: int = 100
    epochs: int = 3
    max_new_tokens: int = 128


QUICK = DemoSize(train=8, test=8, capitals=8, benchmark_limit=8, epochs=1, max_new_tokens=96)
LORA = LoraSettings(r=8, alpha=16, dropout=0.05, modules=("q_proj", "k_proj", "v_proj", "o_proj"))
LR = 5e-4  # higher than the papers' 1e-4: a 135M model and a few dozen steps


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    if not path.is_file():  # the data are a pure function of the seeds: written once, never changed
        write_records(path, rows)
    return path


def make_data(folder: Path, size: DemoSize) -> dict[str, Path]:
    train = word_problems(one_step, size.train, seed=1)
    test = word_problems(one_step, size.test, seed=2, exclude={r["question"] for r in train})
    return {"train": write_jsonl(folder / "train.jsonl", train),
            "test": write_jsonl(folder / "test.jsonl", test),
            "capitals": write_jsonl(folder / "capitals.jsonl", capitals()[:size.capitals])}


def probes(data: dict[str, Path], data_dir: Path | None, size: DemoSize) -> dict[str, list]:
    """{benchmark: items} evaluated for every model: the target task first, then the retention probes."""
    items = {"word_problems": load_task(data["test"]), "capitals": load_task(data["capitals"])}
    for name in PROBE_BENCHMARKS if data_dir else ():
        try:
            items[name] = evaluation.LOADERS[name](data_dir, size.benchmark_limit)
        except FileNotFoundError:
            pass  # a benchmark that is not there is simply not probed
    return items


def table(results: dict[str, dict], self_share: dict[str, float]) -> str:
    return drop_table(results, targets={"word_problems"}, extra_rows=[["training targets from the model", "",
                                            *[f"{100 * share:.0f}%" for share in self_share.values()]]])


def run(out: Path, size: DemoSize, data_dir: Path | None = None, progress: bool = True) -> str:
    start = time.perf_counter()
    data = make_data(out / "data", size)
    items = probes(data, data_dir, size)
    train_examples = load_task(data["train"])
    tok = ssr.load_tokenizer(ssr.DEFAULT_MODEL)
    settings = {"size": size.__dict__, "lr": LR, "lora": LORA.__dict__}
    evaluate = dict(batch_size=16, max_new_tokens=size.max_new_tokens, progress=progress)

    results, self_share = {}, {}
    print("== base model", flush=True)
    results["base"] = run_benchmarks(ssr.load_model(ssr.DEFAULT_MODEL), tok, items, out / "eval" / "base.json",
                                     settings, **evaluate)
    for method in ("sft", "ssr"):
        print(f"== {method}", flush=True)
        run_dir = out / method
        check_settings(run_dir / "run.json", {"method": method, "loss": training.loss_identity(), **settings},
                       str(run_dir))
        cfg = TrainConfig(epochs=size.epochs, lr=LR, warmup=0.1, micro_batch=4, grad_accum=2, save_every=20,
                          seed=0)
        adapter = run_method(method, ssr.load_model(ssr.DEFAULT_MODEL), tok, train_examples, run_dir,
                             lora_settings=LORA, train_config=cfg, batch_size=16,
                             max_new_tokens=size.max_new_tokens, progress=progress)
        targets = read_records(run_dir / "targets.jsonl")
        self_share[method] = sum(t["source"] != "gold" for t in targets) / len(targets)
        model = lora.load_adapter(ssr.load_model(ssr.DEFAULT_MODEL), adapter)
        results[method] = run_benchmarks(model, tok, items, out / "eval" / f"{method}.json", settings, **evaluate)
    report = table(results, self_share)
    (out / "results.md").write_text(report + "\n")
    print(f"\n{report}\n\n(accuracy in %; in brackets the change from the base model; "
          f"{time.perf_counter() - start:.0f} s; everything is cached under {out})")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where every step is cached")
    p.add_argument("--data-dir", type=Path, help="official benchmark files (layout of ../shared/data) to probe too")
    p.add_argument("--quick", action="store_true", help="a few examples and one epoch: checks that it runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    out = args.out / "quick" if args.quick else args.out
    run(out, QUICK if args.quick else DemoSize(), args.data_dir, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
