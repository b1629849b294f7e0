"""LoRA training throughput: ssr's trainer step against transformers + peft, in one process.

    python bench/bench_train.py [--steps 5] [--layers 30] [--device cuda]

Both sides get the same random model with SmolLM2-135M's shape (written once by transformers and
loaded by each), LoRA r=16 on all seven projections, the same batch of 4 x 256 tokens with the loss
on the second half of each sequence, AdamW and gradient clipping, float32 on CPU (bf16 autocast
over float32 weights on CUDA, both sides). The steps of the two sides alternate, so a change in
machine load hits both; the figure is the median step.
"""
import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ssr  # noqa: E402
from ssr import lora  # noqa: E402
from ssr.trainer import Batch, train_step  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--layers", type=int, default=30, help="fewer for a quick look; the figure uses 30")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    import peft
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": args.layers})
    with tempfile.TemporaryDirectory() as tmp:
        transformers.LlamaForCausalLM(config).save_pretrained(tmp)
        ours = ssr.load_model(tmp, device=device)
        theirs = transformers.LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(device)
    lora.apply_lora(ours, r=16, alpha=32, dropout=0.0, targets=lora.MODULES)
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                         target_modules=list(lora.MODULES), task_type="CAUSAL_LM"))
    ours.train()
    theirs.train()
    opt_ours = torch.optim.AdamW(lora.lora_parameters(ours), lr=1e-4)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-4)
    trainable = [sum(p.numel() for p in g["params"]) for g in (*opt_ours.param_groups, *opt_theirs.param_groups)]
    assert trainable[0] == trainable[1], f"LoRA parameter counts differ: {trainable}"

    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    mask = torch.zeros_like(ids)
    mask[:, args.seq // 2:] = 1  # supervise the second half of each sequence
    labels = torch.where(mask.bool(), ids, -100)  # transformers shifts labels itself

    def step_ours():
        return train_step(ours, opt_ours, [Batch(ids, mask)], lr=1e-4, max_grad_norm=1.0, amp=amp)["loss"]

    def step_theirs():
        with amp:
            loss = theirs(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(opt_theirs.param_groups[0]["params"], 1.0)
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return loss.item()

    times = {"ssr": [], "transformers+peft": []}
    for i in range(args.warmup + args.steps):
        for name, step in (("ssr", step_ours), ("transformers+peft", step_theirs)):
            t0 = time.perf_counter()
            loss = step()
            if device.type == "cuda":
                torch.cuda.synchronize()  # the optimizer's kernels may still be queued
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            if i == 0:
                print(f"{name:18s} first loss {loss:.5f}")  # B = 0 on both sides: the same number
    tokens = args.batch * args.seq
    speed = {name: tokens / statistics.median(t) for name, t in times.items()}
    where = f"float32 CPU, {torch.get_num_threads()} threads" if device.type == "cpu" else \
        f"bf16 autocast on {torch.cuda.get_device_name(device)}"
    print(f"{where}, {args.layers} layers, batch {args.batch} x {args.seq}, "
          f"LoRA r=16 on {len(lora.MODULES)} projections, {args.steps} timed steps (median)")
    for name, s in speed.items():
        print(f"{name:18s} {s:8.0f} tokens/s   ({statistics.median(times[name]):.2f} s/step)")
    print(f"ratio ssr / transformers+peft: {speed['ssr'] / speed['transformers+peft']:.2f}x")


if __name__ == "__main__":
    main()
