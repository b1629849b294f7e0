"""Fine-tune a model with LoRA on (prompt, target) conversations.

    python train.py --method sft --data train.jsonl --model DIR --out runs/sft

A method only decides the training targets: `build_conversations` turns task examples into chat
conversations that end with the target answer, then one loop (ssr/trainer.py) trains on them with
the loss on the assistant turns only. sft uses the reference answers as targets.
Writes under --out: adapter/ (PEFT format), metrics.jsonl, checkpoint/, run.json (how the adapter
was made), and with --save-merged a merged HF checkpoint in merged/.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

import ssr
from ssr import lora
from ssr.data import encode
from ssr.tasks import Example, load_task
from ssr.trainer import TrainConfig, seed_everything, train

METHODS = ("sft",)


def prompt_messages(ex: Example) -> list[dict]:
    """The conversation up to the target: a chat record's own turns, else the task question as one user turn."""
    return list(ex.messages) if ex.messages else [{"role": "user", "content": ex.question}]


def build_conversations(method: str, examples: list[Example]) -> list[list[dict]]:
    """Training conversations, each ending with the assistant turn to learn."""
    if method == "sft":
        return [prompt_messages(ex) + [{"role": "assistant", "content": ex.gold}] for ex in examples]
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def parse_args(argv):
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="sft", help="how the training targets are built")
    p.add_argument("--data", help="JSONL of chat records ({'messages': [...]} or {'prompt', 'response'}), "
                                  "or a task file")
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the built-in default")
    p.add_argument("--out", help="run folder (adapter, checkpoints, metrics)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=16)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--targets", default="q_proj,v_proj", help=f"comma-separated, from {','.join(lora.TARGETS)}")
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
    parser, args = parse_args(argv)
    if not argv:
        parser.print_help()
        return 0
    if not args.data or not args.out:
        parser.error("--data and --out are required to train")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                         if f.name not in ("checkpointing", "bf16")},
                      checkpointing=args.gradient_checkpointing, bf16=not args.no_bf16_autocast)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else \
        (torch.bfloat16 if device.type == "cuda" else torch.float32)

    tok = ssr.load_tokenizer(args.model)
    conversations = build_conversations(args.method, load_task(args.data))
    samples, cut = encode(tok, conversations, args.max_len)
    if cut["truncated"] or cut["dropped"]:
        print(f"{cut['truncated']} conversation(s) longer than --max-len {args.max_len} were truncated; "
              f"{cut['dropped']} left without any target token were dropped", file=sys.stderr)
    if not samples:
        parser.error(f"no training conversation left in {args.data}")

    seed_everything(args.seed)  # LoRA's A matrices are drawn from it
    model = ssr.load_model(args.model, dtype=dtype, device=device)
    lora.apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                    targets=[t.strip() for t in args.targets.split(",") if t.strip()])
    out = Path(args.out)
    try:
        train(model, samples, cfg, out, resume=args.resume)
    except (FloatingPointError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    (out / "run.json").write_text(json.dumps({"argv": argv, "method": args.method, "model": str(args.model),
                                              "data": args.data, "samples": len(samples), "config": asdict(cfg)},
                                             indent=2))
    print(f"adapter written to {out / 'adapter'}")
    if args.save_merged:
        hf = model.config.hf
        source_dtype = getattr(torch, hf.get("torch_dtype") or hf.get("dtype") or "float32")
        lora.merge_lora(model)
        ssr.save_model(model, out / "merged", dtype=source_dtype)
        print(f"merged checkpoint written to {out / 'merged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
