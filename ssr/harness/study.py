"""A study: every method x every seed under one recipe, each evaluated on the same target and retention sets
beside one evaluation of the base model, with mean ± sd over seeds, paired differences against SFT with 95%
intervals, and figures (ssr/harness/study_stats.py). study.py is its command line.

One protocol: every run of a study takes its settings from one recipe (`--recipe`, default project) plus the
preset's overrides, the same for every method; runs differ only in how targets are chosen and in the training
seed (LoRA init, data order, dropout), which is the study seed. The trap avoided: comparing methods that each
bring their own budget and prompt format.

The base model's generations (predict, paraphrase, rewrite) do not depend on the training seed: they are made
and judged once, in OUT/generations/, and every run of every seed chooses its targets from them, so a method's
targets.jsonl is identical across seeds (greedy generation; the SDFT recipe's sampled rewrites use the recipe's
own sampling seed, never the study seed). Layout of OUT:

    study.json                      the settings that decide every result (sizes, model, recipe, training);
                                    not the methods or seeds, which a rerun may extend
    data/                           the generated task (demo presets)
    generations/                    the base model's judged generations, shared by all runs
    eval/base.json                  the base model, evaluated once
    runs/{method}/seed{s}/          a run folder as train.py writes it: run.json, targets.jsonl, metrics.jsonl,
                                    checkpoint/, adapter/
    eval/{method}-seed{s}.json      that run's evaluation (per-question scores kept)
    results.json, results.md        every per-seed, per-benchmark number; the tables
    tradeoff.png, loss.png, target_sources.png   with matplotlib

Every step is cached: a finished study prints its tables at once; adding a seed or a method trains and evaluates
only the new runs; an interrupted one continues where it stopped (generation by example, training from its
last checkpoint, evaluation by benchmark).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ssr
from ssr import lora
from ssr.harness import demo_data, evaluation, study_stats
from ssr.harness.evaluation import TARGET_FILES, run_benchmarks, target_examples
from ssr.harness.pipeline import run_method, target_stats
from ssr.harness.recipes import RECIPES, LoraSettings, check_recipe
from ssr.harness.runfiles import check_settings, read_records, write_atomic, write_records
from ssr.harness.tasks import load_task
from ssr.harness.training import RESUMABLE_CHANGES, loss_identity
from ssr.methods import METHODS
from ssr.trainer import TrainConfig

REFERENCE = "sft"  # the method every other is compared with, paired over seeds and questions


@dataclass(frozen=True)
class Preset:
    """A study's sizes and settings, written out. `settings` overrides the recipe's values (the keys of
    recipes.RECIPES) for every method alike."""
    about: str
    task: str  # "demo" (the generated word problems) or a task with its files under --data-dir: gsm8k, squad2
    train: int  # training examples
    test: int  # target-task questions
    retention: tuple[str, ...]  # retention benchmarks: "capitals" (generated) or evaluation.LOADERS names
    retention_limit: int  # questions per retention benchmark (0: all)
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    settings: dict = field(default_factory=dict)
    save_every: int = 20  # steps between checkpoints (not a setting: it changes no result)
    cost: str = ""  # what a run costs, measured or estimated


# The demo's training settings, for every method: a 135M model and a few dozen steps want a higher learning
# rate than the papers' 1e-4, and LoRA on all four attention projections.
DEMO_SETTINGS = dict(epochs=3, lr=5e-4, warmup=0.1, micro_batch=4, grad_accum=2,
                     lora_modules="q_proj,k_proj,v_proj,o_proj", max_new_tokens=128)

PRESETS = {
    "demo": Preset("the CPU demo: one-step word problems (GSM8K format) on SmolLM2-135M-Instruct, a capital-cities "
                   "quiz as the retention probe", task="demo", train=64, test=48, retention=("capitals",),
                   retention_limit=48, settings=DEMO_SETTINGS,
                   cost="4 methods x 3 seeds, 24 optimizer steps a run: 67 min measured on 2 loaded CPU cores (2026-12-04)"),
    "quick": Preset("a smoke run (CI): the demo's task at the smallest sizes", task="demo", train=8, test=8,
                    retention=("capitals",), retention_limit=8, methods=("sft", "ssr"), seeds=(0,),
                    settings={**DEMO_SETTINGS, "epochs": 1, "micro_batch": 4, "grad_accum": 1, "max_new_tokens": 48},
                    save_every=1, cost="1.7 min measured on 2 loaded CPU cores, one torch thread (2026-12-04)"),
    "gsm8k": Preset("GSM8K train -> GSM8K test, with the capital quiz and samples of ARC, MMLU and TruthfulQA as "
                    "retention probes (--data-dir in ../shared/data's layout); the project recipe as it is",
                    task="gsm8k", train=256, test=128,
                    retention=("capitals", "arc_easy", "arc_challenge", "mmlu", "truthfulqa_mc1"),
                    retention_limit=100, settings=dict(max_new_tokens=256),
                    cost="not run; estimated 6-10 h on 2 CPU cores with the default model"),
    "squad2": Preset("SQuAD 2.0 (grounded QA with unanswerable questions, SSR's setting) with its rule judge: "
                     "train on the first questions of the shared dev subset, test on its last (other articles)",
                     task="squad2", train=128, test=64, retention=("capitals", "arc_easy", "mmlu"),
                     retention_limit=100, settings=dict(max_new_tokens=96),
                     cost="not run; estimated 3-5 h on 2 CPU cores with the default model"),
}
TARGET_NAME = {"demo": "word_problems", "gsm8k": "gsm8k", "squad2": "squad2"}


@dataclass
class Study:
    """What one invocation studies: a preset with any overrides from the command line."""
    preset: str
    out: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    model: str = ssr.DEFAULT_MODEL
    recipe: str = "project"
    data_dir: Path | None = None
    train: int | None = None  # None: the preset's
    test: int | None = None
    retention: tuple[str, ...] | None = None
    retention_limit: int | None = None
    settings: dict = field(default_factory=dict)  # recipe keys, over the preset's
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True

    def __post_init__(self):
        p = PRESETS[self.preset]
        self.train = self.train or p.train
        self.test = self.test or p.test
        self.retention = self.retention or p.retention
        self.retention_limit = p.retention_limit if self.retention_limit is None else self.retention_limit
        self.values = {**RECIPES[self.recipe], **p.settings, **self.settings}  # one protocol for every method
        self.target = TARGET_NAME[p.task]

    def lora(self) -> LoraSettings:
        v = self.values
        return LoraSettings(v["lora_r"], v["lora_alpha"], v["lora_dropout"], tuple(v["lora_modules"].split(",")))

    def train_config(self, seed: int) -> TrainConfig:
        v = self.values
        return TrainConfig(**{k: v[k] for k in ("epochs", "lr", "warmup", "min_lr_ratio", "weight_decay",
                                                "max_grad_norm", "micro_batch", "grad_accum")},
                           seed=seed, save_every=PRESETS[self.preset].save_every)

    def sampling(self) -> dict:
        v = self.values
        return {"temperature": v["temperature"], "top_k": v["top_k"], "top_p": v["top_p"], "seed": v["sample_seed"]}


# ---------------------------------------------------------------------------------------------------------
# the data: training examples and the benchmarks every model is evaluated on


def _write_once(path: Path, rows: list[dict]) -> Path:
    if not path.is_file():  # the data are a pure function of the sizes: written once, never changed
        write_records(path, rows)
    return path


def data_dir_file(study: Study, relative: str) -> Path:
    if study.data_dir is None:
        raise ValueError(f"--preset {study.preset} reads {relative} and retention benchmarks from --data-dir "
                         "(the layout of ../shared/data); give --data-dir")
    path = Path(study.data_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(f"--data-dir {study.data_dir}: no {relative}")
    return path


def load_data(study: Study) -> tuple[list, dict[str, list]]:
    """(training examples, {benchmark: items}): the target task first, then the retention benchmarks."""
    for name in study.retention:  # before anything is written
        if name != "capitals" and name not in evaluation.LOADERS:
            raise ValueError(f"--retention {name}: unknown benchmark; choose from capitals, "
                             f"{', '.join(evaluation.LOADERS)}")
        if name != "capitals" and study.data_dir is None:
            raise ValueError(f"--retention {name}: give --data-dir (the layout of ../shared/data)")
    task = PRESETS[study.preset].task
    if task == "demo":
        train = demo_data.word_problems(demo_data.one_step, study.train, seed=1)
        test = demo_data.word_problems(demo_data.one_step, study.test, seed=2, exclude={r["question"] for r in train})
        folder = study.out / "data"
        examples = load_task(_write_once(folder / f"train-{study.train}.jsonl", train))
        items = {study.target: load_task(_write_once(folder / f"test-{study.test}.jsonl", test))}
    elif task == "gsm8k":
        examples = load_task(data_dir_file(study, "gsm8k/train.jsonl"), limit=study.train)
        items = {study.target: target_examples("gsm8k", data_dir_file(study, TARGET_FILES["gsm8k"]), study.test)}
    else:  # squad2: one file; train on its first questions, test on its last (later articles)
        every = load_task(data_dir_file(study, TARGET_FILES["squad2"]))
        if study.train + study.test > len(every):
            raise ValueError(f"--train-limit {study.train} + --test-limit {study.test}: the file holds {len(every)}")
        examples, items = every[:study.train], {study.target: every[-study.test:]}
    limit = study.retention_limit or None
    for name in study.retention:
        if name == "capitals":
            quiz = demo_data.capitals()[:limit]
            items[name] = load_task(_write_once(study.out / "data" / f"capitals-{len(quiz)}.jsonl", quiz))
        else:
            items[name] = evaluation.LOADERS[name](Path(study.data_dir), limit)
    return examples, items


# ---------------------------------------------------------------------------------------------------------
# running it


def study_settings(study: Study, examples: list, items: dict) -> dict:
    """Everything that decides a result, methods and seeds aside (a rerun may add some)."""
    return {"preset": study.preset, "model": str(study.model), "recipe": study.recipe,
            "data_dir": str(Path(study.data_dir).resolve()) if study.data_dir else None,
            "train": {"n": len(examples), "ids_sha256": hashlib.sha256(json.dumps([e.id for e in examples]).encode())
                      .hexdigest()}, "benchmarks": {name: len(v) for name, v in items.items()},
            "settings": {k: v for k, v in study.values.items() if k != "seed"},  # the seed is the study seed
            "loss": loss_identity(), "batch_size": study.batch_size, "dtype": study.dtype}


class Progress:
    """One line per step of the whole study: k/N, cached or done in how long, and an estimate of what is left."""

    def __init__(self, steps: int):
        self.steps, self.done, self.spent, self.ran = steps, 0, 0.0, 0

    def start(self, what: str) -> float:
        print(f"[{self.done + 1}/{self.steps}] {what}", flush=True)
        return time.perf_counter()

    def end(self, started: float, cached: bool) -> None:
        self.done += 1
        if cached:
            print("    cached", flush=True)
            return
        took = time.perf_counter() - started
        self.spent, self.ran = self.spent + took, self.ran + 1
        left = self.spent / self.ran * (self.steps - self.done)
        print(f"    done in {took / 60:.1f} min; about {left / 60:.0f} min left if the rest is not cached", flush=True)


def run_study(study: Study) -> dict:
    """Run (or resume, or just read) the study; returns the results written to OUT/results.json."""
    for method in study.methods:
        if method not in METHODS:
            raise ValueError(f"--methods {method}: unknown; choose from {', '.join(METHODS)}")
    out = study.out
    tok = ssr.load_tokenizer(study.model)
    for method in study.methods:
        check_recipe(study.recipe, method, tok.chat_template, str(study.model))
    examples, items = load_data(study)
    settings = study_settings(study, examples, items)
    check_settings(out / "study.json", settings, str(out))
    from ssr.harness.cli import device_and_dtype  # the scripts' one device rule
    device, dtype = device_and_dtype(study.device, study.dtype)
    load = lambda: ssr.load_model(study.model, dtype=dtype, device=device)  # noqa: E731: a fresh model
    eval_settings = {"model": str(study.model), "benchmarks": settings["benchmarks"], "data_dir": settings["data_dir"],
                     "max_new_tokens": study.values["max_new_tokens"], "batch_size": study.batch_size,
                     "dtype": study.dtype}

    def evaluate(path: Path, adapter: Path | None) -> tuple[dict, bool]:
        check_settings(f"{path.with_suffix('')}.settings.json", eval_settings, str(path))
        done = json.loads(path.read_text())["results"] if path.is_file() else {}
        if all(name in done for name in items):  # finished: no model needed
            return {name: done[name] for name in items}, True
        model = load() if adapter is None else lora.load_adapter(load(), adapter)
        return run_benchmarks(model, tok, items, path, eval_settings, batch_size=study.batch_size,
                              max_new_tokens=study.values["max_new_tokens"], progress=study.progress), False

    progress = Progress(1 + len(study.methods) * len(study.seeds))
    started = progress.start(f"base model: {', '.join(f'{k} ({len(v)})' for k, v in items.items())}")
    base, cached = evaluate(out / "eval" / "base.json", None)
    progress.end(started, cached)
    runs, run_dirs, sources = {}, {}, {}
    for seed in study.seeds:  # seed by seed: a study stopped early holds whole seeds, every method compared
        for method in study.methods:
            run_dir = out / "runs" / method / f"seed{seed}"
            cfg = study.train_config(seed)
            check_settings(run_dir / "run.json", {
                "method": method, "model": str(study.model), "recipe": study.recipe,
                "sampling": {"do_sample": study.values["temperature"] > 0, **study.sampling(),
                             "max_new_tokens": study.values["max_new_tokens"]},
                "lora": asdict(study.lora()), "max_len": study.values["max_len"], "loss": loss_identity(),
                "quality_rule": study.recipe != "sdft",
                "train": {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}}, str(run_dir))
            started = progress.start(f"{method} seed {seed}: targets, training ({cfg.epochs} epochs), evaluation")
            adapter = run_dir / "adapter"
            trained = (adapter / "adapter_config.json").is_file() and (run_dir / "targets.jsonl").is_file()
            if not trained:
                run_method(method, load(), tok, examples, run_dir, lora_settings=study.lora(), train_config=cfg,
                           batch_size=study.batch_size, max_new_tokens=study.values["max_new_tokens"],
                           max_len=study.values["max_len"], quality=study.recipe != "sdft",
                           progress=study.progress, recipe=study.recipe, sampling=study.sampling(),
                           generations_dir=out / "generations")
            runs.setdefault(method, {})[seed], cached = evaluate(out / "eval" / f"{method}-seed{seed}.json", adapter)
            run_dirs.setdefault(method, {})[seed] = run_dir
            sources.setdefault(method, {})[seed] = dict(Counter(r["source"]
                                                                for r in read_records(run_dir / "targets.jsonl")))
            progress.end(started, trained and cached)
    order = lambda by_method: {m: dict(sorted(by_method[m].items())) for m in study.methods}  # noqa: E731
    return report(study, settings, base, order(runs), order(run_dirs), order(sources))


# ---------------------------------------------------------------------------------------------------------
# the results


def report(study: Study, settings: dict, base: dict, runs: dict, run_dirs: dict, sources: dict) -> dict:
    targets = {study.target}
    summary = study_stats.summarize(base, runs, targets=targets)
    tables = [study_stats.summary_table(base, summary, targets=targets)]
    differences = {}
    if REFERENCE in runs and len(runs) > 1:
        differences = study_stats.paired_differences(base, runs, REFERENCE, targets=targets)
        tables.append(study_stats.difference_table(differences, REFERENCE))
    tables.append("training targets, the same for every seed (shared base generations):\n" + "\n".join(
        f"- {m}: {target_stats(run_dirs[m][study.seeds[0]])}" for m in study.methods))
    results = {"preset": study.preset, "methods": list(study.methods), "seeds": list(study.seeds),
               "reference": REFERENCE, "settings": settings, "base": base,
               "runs": {m: {str(s): r for s, r in seeds.items()} for m, seeds in runs.items()},
               "target_sources": {m: {str(s): c for s, c in seeds.items()} for m, seeds in sources.items()},
               "summary": {m: {"scores": {k: asdict(v) for k, v in s.scores.items()},
                               "changes": {k: asdict(v) for k, v in s.changes.items()}} for m, s in summary.items()},
               "differences": {m: {k: {**asdict(d), "significant": d.significant} for k, d in by.items()}
                               for m, by in differences.items()}}
    write_atomic(study.out / "results.json", json.dumps(results, indent=1))
    figures = study_stats.write_figures(study.out, base, runs, run_dirs, targets=targets)
    text = "\n\n".join(tables)
    write_atomic(study.out / "results.md", text + "\n")
    print(f"\n{text}\n")
    if isinstance(figures, str):
        print(figures)
    else:
        print("figures: " + ", ".join(str(p) for p in figures))
    print(f"results: {study.out / 'results.json'} (every seed's and benchmark's numbers, per question), "
          f"{study.out / 'results.md'}")
    return results
