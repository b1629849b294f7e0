"""Load and save HF-layout checkpoints: config.json + model.safetensors (or shards with an index).

`config_from_hf` translates config.json into `ModelConfig`. Loading is strict and lean: the model is built
on the meta device (no init, no memory), then each tensor is read from the memory-mapped file, converted and
put in place, so peak memory is the model plus one tensor. Traps avoided: a config field we do not implement
(a RoPE scaling type, an activation, quantisation) that would still load and produce fluent but wrong text is
refused by name; a missing, unexpected or misshaped tensor that `load_state_dict(strict=False)` would leave
at random init is an error naming it.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ssr.model import ModelConfig, Transformer

DEFAULT_MODEL = "smollm2-135m-instruct"  # the built-in model, made from a GGUF on first use
MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_KEYS = {"default": (), "linear": ("factor",),  # each RoPE type, and the fields it needs
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
# Tensors some checkpoints carry that hold nothing the model needs (RoPE tables are recomputed).
HARMLESS = re.compile(r".*rotary_emb\.inv_freq$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def config_from_hf(cfg: dict, source: str = "config.json") -> ModelConfig:
    """Translate an HF config dict (llama, mistral, qwen2), refusing anything that would silently change the math."""
    def refuse(name, value, why):
        raise ValueError(f"{source}: unsupported {name}={value!r} ({why})")

    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        refuse("model_type", model_type, f"supported: {', '.join(MODEL_TYPES)}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(cfg.get(name), int):
            raise ValueError(f"{source}: missing or non-integer field {name!r}")
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        refuse("hidden_act", act, "only SwiGLU with silu is implemented")
    if cfg.get("quantization_config"):
        refuse("quantization_config", cfg["quantization_config"].get("quant_method", "?"),
               "quantised checkpoints are not supported; use a float checkpoint")
    if cfg.get("attention_dropout", 0.0):
        refuse("attention_dropout", cfg["attention_dropout"], "only 0.0 is implemented")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        refuse("partial_rotary_factor", cfg["partial_rotary_factor"], "only 1.0 is implemented")

    # RoPE: transformers 4 writes rope_theta (+ rope_scaling); transformers 5 writes rope_parameters.
    rope = dict(cfg.get("rope_parameters") or {})
    if isinstance(rope.get("full_attention"), dict):  # per-layer-type rope parameters
        refuse("rope_parameters", rope, "per-layer-type RoPE is not implemented")
    if cfg.get("rope_scaling"):  # the older field wins: it is what transformers 4 itself reads
        rope.update(cfg["rope_scaling"])
        rope["rope_type"] = cfg["rope_scaling"].get("rope_type", cfg["rope_scaling"].get("type"))
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
        rope.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    if rope_type not in ROPE_KEYS:
        refuse("rope type", rope_type, f"supported: {', '.join(ROPE_KEYS)}")
    missing = [k for k in ROPE_KEYS[rope_type] if k not in rope]
    if missing:
        raise ValueError(f"{source}: rope type {rope_type!r} needs {missing}")
    scaling = {"rope_type": rope_type, **{k: rope[k] for k in ROPE_KEYS[rope_type]}} if rope_type != "default" else {}

    heads, n_layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    # Which layers use a sliding window, and how wide it is. transformers ignores llama's sliding_window
    # field, and qwen2's unless use_sliding_window is set.
    window = cfg.get("sliding_window")
    if model_type == "llama" or (model_type == "qwen2" and not cfg.get("use_sliding_window", False)):
        window = None
    if window is not None and (not isinstance(window, int) or window <= 0):
        refuse("sliding_window", window, "expected a positive integer or null")
    layer_types = cfg.get("layer_types")
    if layer_types is None:  # as transformers: qwen2's sliding layers start at max_window_layers
        first = cfg.get("max_window_layers", n_layers) if model_type == "qwen2" else 0
        layer_types = ["sliding_attention" if window and i >= first else "full_attention" for i in range(n_layers)]
    if len(layer_types) != n_layers:
        raise ValueError(f"{source}: layer_types has {len(layer_types)} entries for {n_layers} layers")
    for kind in layer_types:
        if kind not in ("full_attention", "sliding_attention"):
            refuse("layer_types entry", kind, "supported: full_attention, sliding_attention")

    qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    return ModelConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=n_layers, num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(cfg.get("mlp_bias", False)),
        layer_windows=[window if kind == "sliding_attention" and window else None for kind in layer_types],
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        eos_token_id=cfg.get("eos_token_id"))


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON object from a file, or an error naming the file ({} when the file does not exist)."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON {what} ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a valid JSON {what} (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def resolve_model_dir(path_or_name) -> Path:
    """A checkpoint folder, or the built-in default model's folder (built on first use)."""
    if str(path_or_name).lower() == DEFAULT_MODEL:
        from ssr.harness.default_model import default_model_dir  # the GGUF converter, run once into a cache
        return default_model_dir()
    folder = Path(path_or_name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder} (expected an HF checkpoint folder "
                                f"with config.json, or the name {DEFAULT_MODEL!r})")
    return folder


def safetensors_files(folder: Path) -> dict[str, list[str]]:
    """{file: [tensor names]} for a single-file or sharded (index.json) checkpoint."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)
        for file in files:
            if not (folder / file).is_file():
                raise FileNotFoundError(f"{index} names shard {file}, which is missing")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return {"model.safetensors": None}  # names read when the file is opened
    other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
    hint = f" (found {', '.join(other)}: convert them to safetensors first)" if other else ""
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}{hint}")


def open_safetensors(path: Path):
    """safe_open, with an error that names the file when it is not a safetensors file."""
    try:
        return safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def mismatch_error(what: str, problems: list[str]) -> ValueError:
    """One error listing every missing, unexpected or misshaped tensor (the first 20), not just the first."""
    shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
    return ValueError(f"{what}:\n  {shown}")


def load_model(path_or_name, dtype=torch.float32, device="cpu") -> Transformer:
    """Build the model from a checkpoint folder (or "smollm2-135m-instruct"), in eval mode."""
    folder = resolve_model_dir(path_or_name)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    hf_config = read_json(config_file, "config")
    cfg = config_from_hf(hf_config, source=str(config_file))
    files = safetensors_files(folder)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {name: p.shape for name, p in model.named_parameters()}  # tied lm_head appears once, as embed
    tied_head = "lm_head.weight" if cfg.tie_word_embeddings else None

    problems, loaded = [], set()
    for file, names in files.items():
        with open_safetensors(folder / file) as f:
            for name in names or f.keys():
                if HARMLESS.match(name) or name == tied_head:
                    continue
                if name not in expected:
                    problems.append(f"unexpected tensor {name} in {file}")
                    continue
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(expected[name]):
                    problems.append(f"tensor {name} in {file} has shape {shape}, the model expects "
                                    f"{tuple(expected[name])}")
                    continue
                tensor = f.get_tensor(name).to(device=device, dtype=dtype)
                module_name, _, leaf = name.rpartition(".")
                model.get_submodule(module_name)._parameters[leaf] = nn.Parameter(tensor, requires_grad=True)
                loaded.add(name)
    problems += [f"missing tensor {name} (shape {tuple(expected[name])})" for name in expected if name not in loaded]
    if problems:
        raise mismatch_error(f"checkpoint {folder} does not match its config.json", problems)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.source_dir, model.hf_config = folder, hf_config  # for save_model and the adapter's config
    return model.eval()


def save_model(model: Transformer, out_dir, dtype=None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write an HF-layout checkpoint (config, safetensors, tokenizer files) that transformers loads, through
    atomic_dir: a crash never leaves a half-written checkpoint, nor loses the one it replaces."""
    out_dir, tied = Path(out_dir), model.config.tie_word_embeddings
    state = {name: p.detach().to("cpu", dtype=dtype or p.dtype).contiguous()
             for name, p in model.state_dict().items() if not (tied and name == "lm_head.weight")}
    shards, size = [{}], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    with atomic_dir(out_dir) as tmp:
        if len(shards) == 1:
            save_file(shards[0], tmp / "model.safetensors", metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / file, metadata={"format": "pt"})
                weight_map.update({name: file for name in shard})
            total = sum(t.numel() * t.element_size() for t in state.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        saved_dtype = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
        hf = {**getattr(model, "hf_config", {}), "torch_dtype": saved_dtype}
        if "dtype" in hf:  # transformers 5's name for it
            hf["dtype"] = saved_dtype
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        source = getattr(model, "source_dir", None)
        for name in TOKENIZER_FILES:
            if source is not None and (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, tmp / name)
    return out_dir


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder that replaces `final` once all of it is synced to disk. A crash leaves the old
    folder or the new one, never a mix: between the renames the old one sits at `final.old` (the harness's
    training falls back to it)."""
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for path in [*tmp.rglob("*"), tmp]:
            fsync(path)
    except (OSError, RuntimeError) as e:  # a full disk: torch.save says only "basic_ios::clear: iostream error"
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, RuntimeError) and not any(w in str(e) for w in ("iostream", "write", "Write")):
            raise
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:120]
        free = shutil.disk_usage(final.parent).free // 2**20
        raise OSError(getattr(e, "errno", None) or errno.EIO, f"{final}: could not be written ({cause}; "
                      f"{free} MiB free on its disk); the previous one, if any, is unchanged") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
