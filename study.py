"""A study of the four methods: every method x every seed under one recipe, the base model evaluated once, every
run evaluated on the same target and retention sets; mean ± sd over seeds, the paired difference against SFT with
its 95% interval, figures.

    python study.py --preset demo --seeds 0 1 2        # the CPU demo (python train.py runs it too)
    python study.py --preset demo --seeds 0 1 2 3      # adds seed 3: only its runs are trained
    python study.py --preset quick                     # a smoke run (CI)
    python study.py --preset gsm8k --data-dir ../shared/data
    python study.py --preset squad2 --data-dir ../shared/data

Every run takes its settings from one recipe (--recipe, default project) plus the preset's, the same for every
method: runs differ only in target choice and training seed (= the study seed). The base model's generations are
made and judged once per study and shared by every seed, so each method's targets are identical across seeds.
Every step is cached under --out: a finished study prints its tables at once, a rerun with more seeds or
methods runs only those, an interrupted one continues (ssr/harness/study.py; docs/results.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ssr
from ssr.harness import cli, distributed
from ssr.harness.recipes import RECIPES
from ssr.harness.runfiles import hold_lock
from ssr.harness.study import PRESETS, Study, run_study
from ssr.methods import METHODS


def presets_text() -> str:
    lines = ["presets (sizes written out; flags override them):"]
    for name, p in PRESETS.items():
        lines.append(f"  {name}: {p.about}.\n    train {p.train}, test {p.test}, retention {','.join(p.retention)} "
                     f"({p.retention_limit or 'all'} each), methods {' '.join(p.methods)}, seeds "
                     f"{' '.join(map(str, p.seeds))}, settings over the recipe {p.settings or 'none'}; {p.cost}")
    return "\n".join(lines)


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=__doc__.split("\n\n", 2)[2] + "\n" + presets_text())
    p.add_argument("--preset", choices=tuple(PRESETS), default="demo", help="sizes and settings (default demo)")
    p.add_argument("--seeds", type=cli.nonnegative_int, nargs="+", help="study seeds = training seeds "
                                                                        "(default: the preset's)")
    p.add_argument("--methods", choices=METHODS, nargs="+", help="default: the preset's (sft first: the reference)")
    p.add_argument("--out", type=Path, help="where every step is cached (default runs/PRESET)")
    p.add_argument("--recipe", choices=RECIPES, default="project", help="the settings of every run, whatever the "
                                                                        "method (docs/recipes.md)")
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the built-in default")
    p.add_argument("--data-dir", type=Path, help="official data files in the layout of ../shared/data")
    p.add_argument("--train-limit", type=cli.positive_int, help="training examples")
    p.add_argument("--test-limit", type=cli.positive_int, help="target-task questions")
    p.add_argument("--retention", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
                   help="retention benchmarks, comma-separated: capitals, arc_easy, arc_challenge, mmlu, "
                        "truthfulqa_mc1, truthfulqa_mc2, hellaswag, winogrande")
    p.add_argument("--retention-limit", type=cli.nonnegative_int, help="questions per retention benchmark (0: all)")
    p.add_argument("--epochs", type=cli.positive_int, help="over the recipe's and preset's")
    p.add_argument("--max-new-tokens", type=cli.positive_int, help="targets and evaluation; longer ones are cut")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="prompts generated together")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--quiet", action="store_true", help="no progress bars (the study's own lines stay)")
    return p.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    if distributed.launched():
        raise ValueError("a study runs in one process; launch it without torchrun")
    preset = PRESETS[args.preset]
    methods = tuple(dict.fromkeys(args.methods or preset.methods))
    if "sft" in methods:  # the reference first: tables and figures read in that order
        methods = ("sft", *[m for m in methods if m != "sft"])
    overrides = {k: v for k, v in (("epochs", args.epochs), ("max_new_tokens", args.max_new_tokens)) if v}
    out = args.out or Path("runs") / args.preset
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder")
    study = Study(args.preset, out, methods, tuple(dict.fromkeys(args.seeds or preset.seeds)), model=args.model,
                  recipe=args.recipe, data_dir=args.data_dir, train=args.train_limit, test=args.test_limit,
                  retention=args.retention, retention_limit=args.retention_limit, settings=overrides,
                  batch_size=args.batch_size, device=args.device, dtype=args.dtype, progress=not args.quiet)
    with hold_lock(out):
        try:
            run_study(study)
        except KeyboardInterrupt:
            raise cli.Interrupted(f"every finished step is kept in {out}; rerun the same command to continue") from None
    return 0


def main(argv=None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
