"""Generation speed: ssr.generate, eager and static (fixed-shape decode, CUDA graphs on a GPU), against
transformers' generate, dynamic cache and static cache compiled; same model, prompts and lengths.

The model has SmolLM2-135M's shape (llama, 30 layers, hidden 576, 9/3 heads, FFN 1536, vocab 49152,
tied) with random weights, built by transformers, saved, and loaded by ssr.load_model, so both sides
hold the same weights (--dtype: float32 on CPU, bfloat16 on CUDA by default). All decode greedily for
exactly --new-tokens tokens (no early stop), at batch 1 (a 128-token prompt) and larger batches of
left-padded prompts of different lengths (64 to 192 tokens, as GSM8K questions in a chat template), in
this one process. Tokens/s counts new tokens over the whole call, prefill included, best of --repeats
calls after a first call, which is timed apart: it holds the CUDA-graph capture (ssr static) or the
torch.compile (transformers static, `cache_implementation="static"`, compiled by generate itself with
mode="reduce-overhead" as on every GPU; on CPU only with --hf-static, as compiling takes minutes there).

The decode bandwidth is what batch-1 decoding streams from memory, weight bytes x decode tokens/s
(prefill excluded), as a fraction of the machine's copy bandwidth (read + write bytes of a large
tensor copy, as STREAM counts it): near 1, decoding is as fast as memory allows.

    python bench/bench_generate.py [--new-tokens 128] [--repeats 3] [--device cpu] [--batches 1 16 64]
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


def build(folder: Path, device: str, dtype: torch.dtype):
    """The same random weights as a transformers model and as an ssr model."""
    import transformers
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2_135M)).float().eval()
    hf.save_pretrained(folder)
    return hf.to(device, dtype), ssr.load_model(folder, device=device, dtype=dtype)


def prompts_for(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [128] if batch == 1 else torch.linspace(64, 192, batch).long().tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def run_hf(hf, prompts, new_tokens, static=False):
    """static: transformers' static cache, which its generate compiles (mode="reduce-overhead") on a GPU and, with
    the private `_compile_all_devices` switch, on CPU."""
    import transformers
    ids, mask = left_pad(prompts)
    kw = {}
    if static:
        kw = dict(cache_implementation="static", compile_config=transformers.CompileConfig())
        kw["compile_config"]._compile_all_devices = True
    with torch.inference_mode():  # an eos id that never comes: exactly new_tokens tokens, as stop_ids=[] gives
        out = hf.generate(ids.to(hf.device), attention_mask=mask.to(hf.device), do_sample=False,
                          max_new_tokens=new_tokens, pad_token_id=0, eos_token_id=10**9, **kw)
    return out[:, ids.shape[1]:].tolist()


def run_ours(model, prompts, new_tokens, static=False):
    return generate(model, prompts, max_new_tokens=new_tokens, stop_ids=[], static=static)


def timed(fns: dict, repeats: int, device: str) -> tuple[dict, dict, dict]:
    """Best wall time of each function over `repeats` rounds, the time of its first call (made before the rounds:
    captures and compiles happen there), and its last result.

    Rounds alternate between the functions, so a machine that slows down for a while slows all of them.
    """
    best, out, first = {k: float("inf") for k in fns}, {}, {}
    for name, fn in fns.items():
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        first[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            out[name] = fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out, first


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
    ap.add_argument("--batches", type=int, nargs="+", help="default: 1 16 64 on CUDA, 1 16 on CPU")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--columns", nargs="+", choices=["hf", "hf-static", "eager", "static"],
                    default=["hf", "hf-static", "eager", "static"], help="which generate calls to time")
    ap.add_argument("--hf-static", action="store_true", help="time transformers' compiled static cache on CPU too")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    columns = list(args.columns)
    if "hf-static" in columns and not (cuda or args.hf_static):
        columns.remove("hf-static")
        print("transformers static left out: on CPU its torch.compile takes minutes per batch shape (--hf-static)")

    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    with tempfile.TemporaryDirectory() as tmp:
        hf, model = build(Path(tmp), args.device, dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied head counted once
    print(f"model: SmolLM2-135M shape, {weight_bytes / 1e6:.0f} MB of {str(dtype)[6:]} weights; tok/s, best of "
          f"{args.repeats}, and (in brackets) the first call's seconds")

    fns = {"hf": lambda p: run_hf(hf, p, args.new_tokens), "hf-static": lambda p: run_hf(hf, p, args.new_tokens, True),
           "eager": lambda p: run_ours(model, p, args.new_tokens),
           "static": lambda p: run_ours(model, p, args.new_tokens, True)}
    names = {"hf": "transformers", "hf-static": "transformers static", "eager": "ssr eager", "static": "ssr static"}
    for batch in args.batches or ([1, 16, 64] if cuda else [1, 16]):
        prompts = prompts_for(batch, SMOLLM2_135M["vocab_size"])
        n = batch * args.new_tokens
        t, out, first = timed({c: lambda c=c: fns[c](prompts) for c in columns}, args.repeats, args.device)
        cells = [f"{names[c]} {n / t[c]:7.1f} ({first[c]:.1f} s)" for c in columns]
        if {"eager", "static"} <= set(t):
            cells.append(f"static/eager {t['eager'] / t['static']:.2f}x")
        if {"hf-static", "static"} <= set(t):
            cells.append(f"static/transformers static {t['hf-static'] / t['static']:.2f}x")
        ref = next((c for c in ("hf", "hf-static") if c in out), None)  # greedy rows equal to transformers' own
        same = [f"{c} {sum(a == b for a, b in zip(out[c], out[ref]))}/{batch}" for c in columns if ref and c != ref]
        print(f"batch {batch:2d}: " + " | ".join(cells) + (f" | greedy rows as {ref}: " + ", ".join(same) if same
                                                           else ""))

    # Decode alone at batch 1: the time of N tokens minus the time of the prefill and first token.
    prompts = prompts_for(1, SMOLLM2_135M["vocab_size"])
    bw = copy_bandwidth(args.device)
    for static in [c == "static" for c in columns if c in ("eager", "static")]:
        t, _, _ = timed({"first": lambda: run_ours(model, prompts, 1, static),
                         "all": lambda: run_ours(model, prompts, args.new_tokens, static)}, args.repeats, args.device)
        decode_tps = (args.new_tokens - 1) / (t["all"] - t["first"])
        print(f"batch  1 decode, ssr {'static' if static else 'eager'}: {decode_tps:.1f} tok/s x "
              f"{weight_bytes / 1e6:.0f} MB = {weight_bytes * decode_tps / 1e9:.2f} GB/s; copy bandwidth "
              f"{bw / 1e9:.2f} GB/s; fraction {weight_bytes * decode_tps / bw:.2f}")


if __name__ == "__main__":
    main()
