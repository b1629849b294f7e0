"""Generate the model's answers, paraphrases or rewrites for a task file, one JSONL record per example.

    python generate.py --model smollm2-135m-instruct --task-file data/gsm8k/train.jsonl --mode predict \\
        --out runs/gsm8k/predict.jsonl

Modes (prompts in ssr/tasks.py): predict (the model answers the task, SSR/S3FT), paraphrase (restates the
gold answer in its own words, S3FT), rewrite (SDFT's distillation prompt). Greedy unless --temperature > 0.
Each record: {"id", "mode", "messages", "output", "finish_reason": "stop"|"length", "prompt_tokens",
"output_tokens"} (+ "prefix" in rewrite mode). Resumable: a rerun skips the (id, mode) pairs already in
--out; a killed run loses at most the batch in flight. The settings that shape the outputs are kept beside
--out (NAME.settings.json), and a rerun with others is refused.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import ssr
from ssr import distributed
from ssr.checkpoint import device_and_dtype
from ssr.runfiles import check_settings
from ssr.sampling import generate_records
from ssr.tasks import MODES, TASKS, load_task
from ssr.tokenizer import TEMPLATES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the default model's name")
    p.add_argument("--task-file", required=True, help="GSM8K, MBPP or NQ-open JSONL, or chat records")
    p.add_argument("--task", choices=TASKS + ("chat",), help="its format (default: detected from the first record)")
    p.add_argument("--mode", choices=MODES, default="predict")
    p.add_argument("--out", required=True, help="output JSONL; appended to, and skipped on a rerun")
    p.add_argument("--adapter", help="a LoRA adapter folder (PEFT format) to generate with")
    p.add_argument("--limit", type=int, help="only the first N examples of the task file")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set with this probability")
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable); stop ids come from "
                                                                "the tokenizer")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--chat-template", choices=TEMPLATES, help="override the template detected from the tokenizer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    examples = load_task(args.task_file, args.task, args.limit)
    device, dtype = device_and_dtype(args.device, args.dtype)
    try:  # what shapes the outputs must not change between the runs that append to --out
        device = distributed.init(device)  # under torchrun: join the other ranks (docs/distributed.md)
        with distributed.main_first():
            check_settings(Path(args.out).with_suffix(".settings.json"), {
                "model": str(args.model), "adapter": args.adapter, "task_file": str(Path(args.task_file).resolve()),
                "dtype": str(dtype), "chat_template": args.chat_template, "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
                "stop": args.stop}, args.out)
    except ValueError as e:
        p.error(str(e))
    model = ssr.load_model(args.model, dtype=dtype, device=device)
    tok = ssr.load_tokenizer(args.model, chat_template=args.chat_template)
    if args.adapter:
        from ssr import lora
        lora.load_adapter(model, args.adapter)

    records = generate_records(model, tok, examples, args.mode, args.out, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, stop_strings=args.stop, progress=not args.quiet)
    reasons = Counter(r["finish_reason"] for r in records)
    print(f"{len(records)} {args.mode} records in {args.out}: {reasons['stop']} stopped, "
          f"{reasons['length']} cut at --max-new-tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
