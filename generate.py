"""Generate the model's answers, paraphrases or rewrites for a task file, one JSONL record per example.

    python generate.py --model smollm2-135m-instruct --task-file data/gsm8k/train.jsonl --mode predict \\
        --out runs/gsm8k/predict.jsonl

Modes (prompts in ssr/harness/tasks/): predict (the model answers the task, SSR/S3FT), paraphrase (restates the
gold answer in its own words, S3FT), rewrite (SDFT's distillation prompt). Greedy unless --temperature > 0.
Each record: {"id", "mode", "messages", "prompt_text" (the exact rendered prompt), "output", "finish_reason": "stop"|"length", "prompt_tokens",
"output_tokens"} (+ "prefix" in rewrite mode). Resumable: a rerun skips the (id, mode) pairs already in
--out; a killed run loses at most the batch in flight. The settings that shape the outputs are kept beside
--out (NAME.settings.json, with a digest of the model's and the adapter's files: one retrained in place is
another model), and a rerun with others is refused; so is a kept record whose prompt is not the task file's
now (ids are line positions: an edited task file), and an --out that is one of the inputs. A second copy on
the same --out is refused while the first holds NAME.lock. Inputs and flags are checked before anything is
written (ssr/harness/cli.py).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import ssr
from ssr.harness import cli, distributed
from ssr.harness.cli import device_and_dtype
from ssr.checkpoint import resolve_model_dir
from ssr.harness.runfiles import check_settings, content_digest, read_records
from ssr.harness.records import check_prompts, generate_records
from ssr.harness.tasks import MBPP_SPLITS, MODES, TASKS, load_task
from ssr.tokenizer import TEMPLATES


def parse_args(argv: list[str]):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the default model's name")
    p.add_argument("--task-file", required=True, help="GSM8K, MBPP or NQ-open JSONL, or chat records")
    p.add_argument("--task", choices=TASKS + ("chat",), help="its format (default: detected from the first record)")
    p.add_argument("--mode", choices=MODES, default="predict")
    p.add_argument("--out", required=True, help="output JSONL; appended to, and skipped on a rerun")
    p.add_argument("--adapter", help="a LoRA adapter folder (PEFT format) to generate with")
    p.add_argument("--limit", type=cli.positive_int, help="only the first N examples of the task file (of --split, "
                                                          "when given)")
    p.add_argument("--split", choices=tuple(MBPP_SPLITS), help="MBPP: the official split by task_id; nq_rc: train "
                                                               "or test, by question")
    p.add_argument("--batch-size", type=cli.positive_int, default=16)
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=512)
    p.add_argument("--temperature", type=cli.nonnegative_float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=cli.nonnegative_int, default=0, help="sample from the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=cli.probability, default=1.0,
                   help="sample from the smallest set with this probability, in (0, 1]")
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable); stop ids come from "
                                                                "the tokenizer")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--static-decode", action="store_true",
                   help="decode with the fixed-shape path (a CUDA graph per batch bucket on GPUs; the same ids as the "
                        "default eager path, not faster on CPU)")
    p.add_argument("--chat-template", choices=TEMPLATES, help="override the template detected from the tokenizer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if "" in args.stop:
        p.error("argument --stop: an empty stop string would stop every answer at once")
    return args



def run(argv: list[str]) -> int:
    args = parse_args(argv)
    # every input is read and checked before anything is written
    examples = load_task(args.task_file, args.task, args.limit, args.split)
    device, dtype = device_and_dtype(args.device, args.dtype)
    device = distributed.init(device)  # under torchrun: join the other ranks (docs/distributed.md)
    model = ssr.load_model(args.model, dtype=dtype, device=device)
    model.static_decode = args.static_decode  # every generation below: sampling.complete reads it
    tok = ssr.load_tokenizer(args.model, chat_template=args.chat_template)
    cli.require_chat_template(tok, args.model)
    if args.adapter:
        cli.load_adapter(model, args.adapter)
    check_prompts(model, tok, examples, args.mode, args.max_new_tokens)
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a JSONL file name")
    cli.refuse_output_over_inputs(out, [out, out.with_suffix(".settings.json"), f"{out}.lock",
                                        out.with_name(f"{out.stem}.parts.json")],
                                  {"--task-file": args.task_file, "--model": args.model, "--adapter": args.adapter})
    # what the records depend on, by content: a model or adapter retrained in place is another model
    weights = {"model_sha256": content_digest(resolve_model_dir(args.model)),
               "adapter_sha256": content_digest(args.adapter) if args.adapter else None}

    with distributed.hold_lock(out):
        with distributed.main_first():  # what shapes the outputs must not change between runs appending to --out
            check_settings(out.with_suffix(".settings.json"), {
                "model": str(args.model), "adapter": args.adapter, "task_file": str(Path(args.task_file).resolve()),
                "dtype": str(dtype), "chat_template": args.chat_template, "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
                "stop": args.stop, **weights}, str(out))
        try:
            records = generate_records(model, tok, examples, args.mode, out, batch_size=args.batch_size,
                                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_strings=args.stop,
                                       progress=not args.quiet)
        except KeyboardInterrupt:
            raise cli.Interrupted(f"{len(read_records(out))} records kept in {out}; rerun the same command to "
                                  "continue") from None
    reasons = Counter(r["finish_reason"] for r in records)
    print(f"{len(records)} {args.mode} records in {args.out}: {reasons['stop']} stopped, "
          f"{reasons['length']} cut at --max-new-tokens", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
