"""Fine-tune with LoRA on targets chosen by one of four methods: sft, ssr, s3ft, sdft.

    python train.py                     # the CPU demo: SFT vs SSR on SmolLM2-135M-Instruct (ssr/demo.py)
    python train.py --method ssr --task gsm8k --data ../shared/data/gsm8k/train.jsonl \\
        --model smollm2-135m-instruct --out runs/gsm8k-ssr --limit 200

A method only decides each example's target (ssr/methods.py): sft the gold answer; ssr the base
model's own answer where the judge accepts it; s3ft that, else the model's paraphrase of gold; sdft
the model's rewrite of gold. Targets come from the base model, greedy, before any training. Then
one LoRA loop (ssr/trainer.py) trains on (task prompt, target) with the loss on the target only.

The run folder keeps every step (predictions, verdicts, targets.jsonl, checkpoints, adapter/), so
running the same command again continues an interrupted run, or does nothing if it finished.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

import ssr
import demo
from ssr import distributed, lora, methods
from ssr.checkpoint import device_and_dtype
from ssr.methods import run_method
from ssr.runfiles import check_settings
from ssr.tasks import TASKS, load_task
from ssr.trainer import RESUMABLE_CHANGES, TrainConfig


def parse_args(argv):
    d, ld = TrainConfig(), lora.LoraSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="run the CPU demo (the default with no arguments); "
                                                       "see python demo.py -h for its options")
    p.add_argument("--method", choices=methods.METHODS, default="sft", help="how the targets are chosen")
    p.add_argument("--task", choices=(*TASKS, "chat"), help="the data's format (default: detected)")
    p.add_argument("--data", help="a GSM8K, MBPP or NQ-open JSONL file, or chat records (sft only)")
    p.add_argument("--limit", type=int, help="train on the first N examples")
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the built-in default")
    p.add_argument("--out", help="run folder: generations, verdicts, targets, checkpoints, adapter")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (what rerunning the same "
                                                         "command does anyway: every step resumes)")
    g = p.add_argument_group("target generation (ssr, s3ft, sdft)")
    g.add_argument("--max-new-tokens", type=int, default=512, help="longer generations are never targets")
    g.add_argument("--batch-size", type=int, default=16, help="prompts generated together")
    g.add_argument("--workers", type=int, help="MBPP programs judged in parallel (default: twice the cores)")
    g.add_argument("--keep-answer-only", action="store_true",
                   help="switch off the target quality rule (judges.unfit_target): accept a correct answer even "
                        "when it has no worked step")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=ld.r)
    g.add_argument("--lora-alpha", type=float, default=ld.alpha)
    g.add_argument("--lora-dropout", type=float, default=ld.dropout)
    g.add_argument("--lora-modules", "--targets", dest="lora_modules", default=",".join(ld.modules),
                   help=f"the projections LoRA wraps, comma-separated, from {','.join(lora.MODULES)}")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--warmup", type=float, default=d.warmup, help="fraction of the steps spent in linear warmup")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="the cosine ends at lr * this")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0 disables clipping")
    g.add_argument("--micro-batch", type=int, default=d.micro_batch, help="sequences per micro-batch, at most")
    g.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="padded tokens per micro-batch, at most")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    g.add_argument("--max-len", type=int, default=2048, help="longer conversations are truncated")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("runtime")
    g.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints; 0: at the end")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="base weights; auto: bfloat16 on CUDA, float32 on CPU (LoRA weights are always float32)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    g.add_argument("--no-bf16-autocast", action="store_true", help="on CUDA, compute in the weights' dtype")
    g.add_argument("--save-merged", action="store_true", help="also write merged/: the adapter folded into the "
                                                              "weights, an HF checkpoint in the source dtype")
    return p, p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] == "--demo":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            print("error: the demo runs in one process; launch it without torchrun", file=sys.stderr)
            return 1
        return demo.main(argv[1:])
    parser, args = parse_args(argv)
    if not args.data or not args.out:
        parser.error("--data and --out are required to train (or no arguments at all, for the demo)")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                         if f.name not in ("checkpointing", "bf16")},
                      checkpointing=args.gradient_checkpointing, bf16=not args.no_bf16_autocast)
    lora_settings = lora.LoraSettings(args.lora_r, args.lora_alpha, args.lora_dropout,
                                      tuple(t.strip() for t in args.lora_modules.split(",") if t.strip()))
    device, dtype = device_and_dtype(args.device, args.dtype)

    try:
        device = distributed.init(device)  # under torchrun: join the other ranks (docs/distributed.md)
        examples = load_task(args.data, args.task, args.limit)
        out = Path(args.out)
        # What decides the targets must not change within a run folder (the trainer checks its own settings).
        with distributed.main_first():
            check_settings(out / "run.json", {"method": args.method, "model": str(args.model),
                                              "data": str(Path(args.data).resolve()), "limit": args.limit,
                                              "max_new_tokens": args.max_new_tokens, "lora": asdict(lora_settings),
                                              "max_len": args.max_len, "quality_rule": not args.keep_answer_only,
                                              "train": {k: v for k, v in asdict(cfg).items()
                                                        if k not in RESUMABLE_CHANGES}},
                           str(out))
        tok = ssr.load_tokenizer(args.model)
        model = ssr.load_model(args.model, dtype=dtype, device=device)
        adapter = run_method(args.method, model, tok, examples, out, lora_settings=lora_settings, train_config=cfg,
                             batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, max_len=args.max_len,
                             workers=args.workers, quality=not args.keep_answer_only)
    except (FloatingPointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"adapter: {adapter}")
    if args.save_merged and distributed.is_main():
        if not lora.lora_modules(model):  # the run had finished before: put its adapter on the fresh model
            lora.load_adapter(model, adapter)
        hf = model.hf_config
        lora.merge_lora(model)
        ssr.save_model(model, out / "merged", dtype=getattr(torch, hf.get("torch_dtype") or hf.get("dtype") or "float32"))
        print(f"merged checkpoint: {out / 'merged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
