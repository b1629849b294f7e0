"""Generation speed: ssr.generate against transformers' generate, same model, prompts and lengths.

The model has SmolLM2-135M's shape (llama, 30 layers, hidden 576, 9/3 heads, FFN 1536, vocab 49152,
tied) with random weights, built by transformers, saved, and loaded by ssr.load_model, so both sides
hold the same float32 weights. Both decode greedily for exactly --new-tokens tokens (no early stop),
at batch 1 and at batch 16 with left-padded prompts of different lengths (64 to 192 tokens, as GSM8K
questions in a chat template), in this one process.
Tokens/s counts new tokens over the whole call, prefill included.

The decode bandwidth is what batch-1 decoding streams from memory, weight bytes x decode tokens/s
(prefill excluded), as a fraction of the machine's copy bandwidth (read + write bytes of a large
tensor copy, as STREAM counts it): near 1, decoding is as fast as memory allows.

    python bench/bench_generate.py [--new-tokens 128] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ssr  # noqa: E402
from ssr.sampling import generate, left_pad  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                    eos_token_id=2)


def build(folder: Path, device: str):
    """The same random weights as a transformers model and as an ssr model."""
    import transformers
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2_135M)).float().eval()
    hf.save_pretrained(folder)
    return hf.to(device), ssr.load_model(folder, device=device)


def prompts_for(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [128] if batch == 1 else torch.linspace(64, 192, batch).long().tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def run_hf(hf, prompts, new_tokens):
    ids, mask = left_pad(prompts)
    with torch.inference_mode():  # an eos id that never comes: exactly new_tokens tokens, as stop_ids=[] gives
        out = hf.generate(ids.to(hf.device), attention_mask=mask.to(hf.device), do_sample=False,
                          max_new_tokens=new_tokens, pad_token_id=0, eos_token_id=10**9)
    return out[:, ids.shape[1]:].tolist()


def run_ours(model, prompts, new_tokens):
    return generate(model, prompts, max_new_tokens=new_tokens, stop_ids=[])


def timed(fns: dict, repeats: int, device: str) -> tuple[dict, dict]:
    """Best wall time of each function over `repeats` rounds, after one warm-up round, and its last result.

    Rounds alternate between the functions, so a machine that slows down for a while slows all of them.
    """
    best, out = {k: float("inf") for k in fns}, {}
    for name, fn in fns.items():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            out[name] = fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int = 2**29, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy, read + write counted (STREAM's Copy)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    with tempfile.TemporaryDirectory() as tmp:
        hf, model = build(Path(tmp), args.device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied head counted once
    print(f"model: SmolLM2-135M shape, {weight_bytes / 1e6:.0f} MB of float32 weights")

    for batch in args.batches:
        prompts = prompts_for(batch, SMOLLM2_135M["vocab_size"])
        n = batch * args.new_tokens
        t, out = timed({"hf": lambda: run_hf(hf, prompts, args.new_tokens),
                        "ssr": lambda: run_ours(model, prompts, args.new_tokens)}, args.repeats, args.device)
        same = "identical" if out["ssr"] == out["hf"] else "DIFFERENT"
        print(f"batch {batch:2d}: transformers {n / t['hf']:7.1f} tok/s | ssr {n / t['ssr']:7.1f} tok/s | "
              f"ratio {t['hf'] / t['ssr']:.2f}x | greedy ids {same}")

    # Decode alone at batch 1: the time of N tokens minus the time of the prefill and first token.
    prompts = prompts_for(1, SMOLLM2_135M["vocab_size"])
    t, _ = timed({"first": lambda: run_ours(model, prompts, 1),
                  "all": lambda: run_ours(model, prompts, args.new_tokens)}, args.repeats, args.device)
    decode_tps = (args.new_tokens - 1) / (t["all"] - t["first"])
    bw = copy_bandwidth(args.device)
    print(f"batch  1 decode: {decode_tps:.1f} tok/s x {weight_bytes / 1e6:.0f} MB = "
          f"{weight_bytes * decode_tps / 1e9:.2f} GB/s; copy bandwidth {bw / 1e9:.2f} GB/s; "
          f"fraction {weight_bytes * decode_tps / bw:.2f}")


if __name__ == "__main__":
    main()
