"""Fine-tune with LoRA on targets chosen by one of four methods: sft, ssr, s3ft, sdft.

    python train.py                     # the CPU demo study: four methods x 3 seeds (study.py --preset demo)
    python train.py --method ssr --task gsm8k --data ../shared/data/gsm8k/train.jsonl \\
        --model smollm2-135m-instruct --out runs/gsm8k-ssr --limit 200

A method only decides each example's target (ssr/methods.py): sft the gold answer; ssr the base
model's own answer where the judge accepts it; s3ft that, else the model's paraphrase of gold; sdft
the model's rewrite of gold. Targets come from the base model before any training. Then one LoRA
loop (ssr/trainer.py) trains on (task prompt, target) with the loss on the target only.

--recipe sets every default below (ssr/harness/recipes.py, sources in docs/recipes.md): "project"
(the default, for every method and task: greedy targets, the task prompts in the model's chat template)
or "sdft", SDFT's published GSM8K recipe as its official code runs it (sampled generations, its own
Llama-2-format prompts, filter and training settings) for sft, ssr and sdft alike (sft with it is the SDFT
paper's SFT baseline). No default depends on --method: two runs that differ only in --method differ only in
how the targets are chosen. MBPP: --split train|validation|test|prompt (official task_ids); training on the
test split is refused unless --allow-test-split.

The run folder keeps every step (predictions, verdicts, targets.jsonl, checkpoints, adapter/), so
running the same command again continues an interrupted run, or does nothing if it finished.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

import ssr
import study
from ssr import lora
from ssr.harness.cli import device_and_dtype
from ssr.harness import cli, distributed, llm_judge
from ssr.harness.pipeline import check_judge, run_method
from ssr.harness.recipes import RECIPES, LoraSettings, check_recipe, default_recipe
from ssr.harness.records import check_prompts
from ssr.checkpoint import resolve_model_dir
from ssr.harness.runfiles import check_settings, content_digest, data_digest
from ssr.harness.tasks import MBPP_SPLITS, TASKS, load_task, refuse_test_split
from ssr.harness.training import RESUMABLE_CHANGES, loss_identity
from ssr.methods import METHODS, NEEDS
from ssr.tokenizer import TEMPLATES
from ssr.trainer import TrainConfig


def lora_module_list(text: str) -> tuple[str, ...]:
    modules = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [m for m in modules if m not in lora.MODULES]
    if unknown or not modules:
        raise argparse.ArgumentTypeError(f"unknown module(s) {', '.join(unknown) or '(none given)'}; choose from "
                                         f"{','.join(lora.MODULES)}")
    return modules


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="run the CPU demo study (the default with no arguments): "
                                                       "python study.py --preset demo; see python study.py -h")
    p.add_argument("--method", choices=METHODS, default="sft", help="how the targets are chosen")
    p.add_argument("--task", choices=(*TASKS, "chat"), help="the data's format (default: detected; a .json file "
                                                           "is SQuAD 2.0's official layout)")
    p.add_argument("--data", help="a GSM8K, MBPP, NQ-open or grounded-QA JSONL file, SQuAD 2.0's official JSON, "
                                  "or chat records (sft, or any method with --judge llm)")
    p.add_argument("--limit", type=cli.positive_int, help="train on the first N examples (of --split, when given)")
    p.add_argument("--split", choices=tuple(MBPP_SPLITS), help="MBPP: the official split by task_id "
                   "(train 601-974, validation 511-600, test 11-510, prompt 1-10); nq_rc: train or test, by question")
    p.add_argument("--allow-test-split", action="store_true", help="train on MBPP test task_ids or nq_rc test "
                                                                   "questions anyway (inflates their scores)")
    p.add_argument("--recipe", choices=RECIPES, help="the settings every default below comes from, whatever the "
                                                     "method (default: project; sdft: SDFT's GSM8K recipe; s3ft: S3FT's "
                                                     "training prompt)")
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the built-in default")
    p.add_argument("--out", help="run folder: generations, verdicts, targets, checkpoints, adapter")
    p.add_argument("--chat-template", choices=TEMPLATES, help="override the template detected from the tokenizer")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (what rerunning the same "
                                                         "command does anyway: every step resumes)")
    g = p.add_argument_group("target generation (ssr, s3ft, sdft)")
    g.add_argument("--max-new-tokens", type=cli.positive_int, help="longer generations are never targets")
    g.add_argument("--temperature", type=cli.nonnegative_float, help="0: greedy (project); sdft: 0.95")
    g.add_argument("--top-k", type=cli.nonnegative_int, help="sample from the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=cli.probability, help="sample from the smallest set with this probability")
    g.add_argument("--sample-seed", type=int, help="seed of the target sampling (recorded in run.json)")
    g.add_argument("--batch-size", type=cli.positive_int, default=16, help="prompts generated together")
    g.add_argument("--workers", type=cli.positive_int, help="MBPP programs judged in parallel (default: twice the cores)")
    g.add_argument("--keep-answer-only", action="store_true",
                   help="switch off the target quality rule (judges.unfit_target): accept a correct answer even "
                        "when it has no worked step")
    g = p.add_argument_group("judge (ssr, s3ft, sdft): which of the model's answers may be targets")
    g.add_argument("--judge", choices=llm_judge.KINDS, default="rule",
                   help="the task's rule judge (default), an LLM judge, or both must accept")
    g.add_argument("--judge-model", help="the LLM judge, required with --judge llm|both: an HF folder, the default "
                                         "model's name, or self (the model being trained, adapters off: named "
                                         "explicitly, never a default); with --judge-url, the served model's name")
    g.add_argument("--judge-url", help="an OpenAI-compatible endpoint (http://host:8000/v1) serving the judge; "
                                       f"the key is read from ${llm_judge.API_KEY_ENV[0]} (else "
                                       f"${llm_judge.API_KEY_ENV[1]})")
    g.add_argument("--judge-max-new-tokens", type=cli.positive_int, default=256, help="the LLM judge's reply, at most")
    g.add_argument("--judge-timeout", type=cli.positive_float, default=llm_judge.DEFAULT_TIMEOUT,
                   help="seconds per request to --judge-url (default %(default)g; not a judge setting: it changes "
                        "no verdict)")
    g = p.add_argument_group("LoRA (defaults: the recipe's)")
    g.add_argument("--lora-r", type=cli.positive_int)
    g.add_argument("--lora-alpha", type=cli.positive_float)
    g.add_argument("--lora-dropout", type=cli.fraction)
    g.add_argument("--lora-modules", "--targets", dest="lora_modules", type=lora_module_list,
                   help=f"the projections LoRA wraps, comma-separated, from {','.join(lora.MODULES)}")
    g = p.add_argument_group("optimisation (defaults: the recipe's)")
    g.add_argument("--epochs", type=cli.positive_int)
    g.add_argument("--lr", type=cli.positive_float)
    g.add_argument("--warmup", type=cli.fraction, help="fraction of the steps spent in linear warmup")
    g.add_argument("--min-lr-ratio", type=cli.float_in(0, 1), help="the cosine ends at lr * this")
    g.add_argument("--weight-decay", type=cli.nonnegative_float)
    g.add_argument("--max-grad-norm", type=cli.nonnegative_float, help="0 disables clipping")
    g.add_argument("--micro-batch", type=cli.positive_int, help="sequences per micro-batch, at most")
    g.add_argument("--batch-tokens", type=cli.positive_int, default=TrainConfig.batch_tokens,
                   help="padded tokens per micro-batch, at most")
    g.add_argument("--grad-accum", type=cli.positive_int, help="micro-batches per optimizer step")
    g.add_argument("--max-len", type=cli.int_at_least(2), help="longer conversations are truncated")
    g.add_argument("--seed", type=int, help="training seed")
    g = p.add_argument_group("runtime")
    g.add_argument("--save-every", type=cli.nonnegative_int, default=TrainConfig.save_every,
                   help="steps between checkpoints; 0: at the end")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--static-decode", action="store_true",
                   help="decode with the fixed-shape path (a CUDA graph per batch bucket on GPUs; the same ids as the "
                        "default eager path, not faster on CPU)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="base weights; auto: bfloat16 on CUDA, float32 on CPU (LoRA weights are always float32)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    g.add_argument("--no-bf16-autocast", action="store_true", help="on CUDA, compute in the weights' dtype")
    g.add_argument("--save-merged", action="store_true", help="also write merged/: the adapter folded into the "
                                                              "weights, an HF checkpoint in the source dtype")
    return p, p.parse_args(argv)


def run(argv: list[str]) -> int:
    if not argv or argv[0] == "--demo":
        if distributed.launched():
            raise ValueError("the demo runs in one process; launch it without torchrun")
        return study.main(["--preset", "demo", *argv[1:]])
    parser, args = parse_args(argv)
    if not args.data or not args.out:
        parser.error("--data and --out are required to train (or no arguments at all, for the demo)")

    # every input is read and checked before anything is written
    examples = load_task(args.data, args.task, None, args.split)
    if not args.allow_test_split:  # the whole file or split, not only its first --limit: ask for a split by name
        refuse_test_split(examples, args.data)
    examples = examples[:args.limit] if args.limit else examples
    if args.method != "sft":
        check_judge(examples[0].task, args.judge, f"--method {args.method}", f"--data {args.data}")
        llm_judge.require_named(args.judge, args.judge_model)
    recipe = args.recipe or default_recipe(examples[0].task)
    for name, value in RECIPES[recipe].items():  # a flag left unset takes the recipe's value
        if getattr(args, name) is None:
            setattr(args, name, lora_module_list(value) if name == "lora_modules" else value)
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.sample_seed}
    quality = not args.keep_answer_only and recipe != "sdft"
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                         if f.name not in ("checkpointing", "bf16")},
                      checkpointing=args.gradient_checkpointing, bf16=not args.no_bf16_autocast)
    lora_settings = LoraSettings(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_modules)
    device, dtype = device_and_dtype(args.device, args.dtype)
    device = distributed.init(device)  # under torchrun: join the other ranks (docs/distributed.md)
    tok = ssr.load_tokenizer(args.model, chat_template=args.chat_template)
    cli.require_chat_template(tok, args.model)
    check_recipe(recipe, args.method, tok.chat_template, str(args.model))
    model = ssr.load_model(args.model, dtype=dtype, device=device)
    model.static_decode = args.static_decode  # every generation below: sampling.complete reads it
    for mode in NEEDS[args.method]:  # the generations it asks for must fit the model's context
        check_prompts(model, tok, examples, mode, args.max_new_tokens, recipe)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a run folder")
    written = [out, f"{out}.lock", *(out / f"{mode}{kind}.jsonl" for mode in ("predict", "paraphrase", "rewrite")
                                     for kind in ("", ".verdicts")),
               *(out / name for name in ("run.json", "targets.jsonl", "metrics.jsonl", "checkpoint", "adapter",
                                         "merged"))]
    cli.refuse_output_over_inputs(out, written, {"--data": args.data, "--model": args.model,
                                                 "--judge-model": args.judge_model if args.judge != "rule" else None})
    print(f"recipe {recipe}: targets {'sampled ' + str(sampling) if args.temperature else 'greedy'}")

    judge = llm_judge.make_judge(args.judge, args.judge_model, args.judge_url, own=(model, tok, str(args.model)),
                                 max_new_tokens=args.judge_max_new_tokens, batch_size=args.batch_size,
                                 device=device, dtype=dtype, timeout=args.judge_timeout)
    judged_by = {"judge": recorded} if (recorded := llm_judge.flag_settings(args)) else {}

    with distributed.hold_lock(out):
        # What decides the targets and the training must not change within a run folder, finished or not.
        with distributed.main_first():
            check_settings(out / "run.json", {
                "method": args.method, "model": str(args.model), "data": str(Path(args.data).resolve()),
                "limit": args.limit, "split": args.split, "recipe": recipe, "chat_template": args.chat_template,
                "sampling": {"do_sample": args.temperature > 0, **sampling, "max_new_tokens": args.max_new_tokens},
                "max_new_tokens": args.max_new_tokens, "lora": asdict(lora_settings), "max_len": args.max_len,
                "loss": loss_identity(), "quality_rule": quality,
                # what the targets depend on, by content: the model's files, and the examples used (ids are line
                # positions: a data file edited in place must not keep its old targets)
                "model_sha256": content_digest(resolve_model_dir(args.model)), "data_sha256": data_digest(examples),
                "train": {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}, **judged_by},
                str(out))
        try:
            adapter = run_method(args.method, model, tok, examples, out, lora_settings=lora_settings,
                                 train_config=cfg, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                 max_len=args.max_len, workers=args.workers, quality=quality, judge=judge,
                                 recipe=recipe, sampling=sampling)
        except KeyboardInterrupt:
            raise cli.Interrupted(f"the generations, verdicts and last checkpoint so far are kept in {out}; rerun "
                                  "the same command to continue") from None
        print(f"adapter: {adapter}")
        if args.save_merged and distributed.is_main():
            if not lora.lora_modules(model):  # the run had finished before: put its adapter on the fresh model
                lora.load_adapter(model, adapter)
            hf = model.hf_config
            lora.merge_lora(model)
            ssr.save_model(model, out / "merged",
                           dtype=getattr(torch, hf.get("torch_dtype") or hf.get("dtype") or "float32"))
            print(f"merged checkpoint: {out / 'merged'}")
    return 0


def main(argv=None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
