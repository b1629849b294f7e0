"""Load and save HF-layout checkpoints: config.json + model.safetensors (or shards with an index).

Loading is strict and lean: the model is built on the meta device (no random init, no memory), then
each tensor is read from the memory-mapped file, converted to the target dtype and device, and put in
place, so peak memory is the model plus one tensor. The trap avoided: a missing, unexpected or
wrongly shaped tensor that a lenient `load_state_dict(strict=False)` would leave at random init.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ssr.config import ModelConfig
from ssr.jsonl import atomic_dir
from ssr.model import Transformer
from ssr.smollm2 import DEFAULT_MODEL, default_model_dir
# Tensors some checkpoints carry that hold nothing the model needs (RoPE tables are recomputed).
HARMLESS = re.compile(r".*rotary_emb\.inv_freq$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def resolve_model_dir(path_or_name) -> Path:
    """A checkpoint folder, or the built-in default model's folder (built on first use)."""
    if str(path_or_name).lower() == DEFAULT_MODEL:
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
        weight_map = json.loads(index.read_text())["weight_map"]
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)
        for file in files:
            if not (folder / file).is_file():
                raise FileNotFoundError(f"{index} names shard {file}, which is missing")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {"model.safetensors": list(f.keys())}
    other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
    hint = f" (found {', '.join(other)}: convert them to safetensors first)" if other else ""
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}{hint}")


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())


def default_dtype(device) -> torch.dtype:
    """The scripts' default for base weights: bfloat16 on CUDA, float32 elsewhere (bf16 matmuls are slow on CPUs)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def mismatch_error(what: str, problems: list[str]) -> ValueError:
    """One error listing every missing, unexpected or misshaped tensor (the first 20), not just the first."""
    shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
    return ValueError(f"{what}:\n  {shown}")


def load_model(path_or_name, dtype=torch.float32, device="cpu") -> Transformer:
    """Build the model from a checkpoint folder (or "smollm2-135m-instruct"), in eval mode."""
    folder = resolve_model_dir(path_or_name)
    cfg = ModelConfig.from_file(folder / "config.json")
    files = safetensors_files(folder)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {name: p.shape for name, p in model.named_parameters()}  # tied lm_head appears once, as embed
    tied_head = "lm_head.weight" if cfg.tie_word_embeddings else None

    problems, loaded = [], set()
    for file, names in files.items():
        with safe_open(folder / file, framework="pt", device="cpu") as f:
            for name in names:
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
                _set_tensor(model, name, f.get_tensor(name).to(device=device, dtype=dtype))
                loaded.add(name)
    problems += [f"missing tensor {name} (shape {tuple(expected[name])})" for name in expected if name not in loaded]
    if problems:
        raise mismatch_error(f"checkpoint {folder} does not match its config.json", problems)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.source_dir = folder
    return model.eval()


def save_model(model: Transformer, out_dir, dtype=None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write an HF-layout checkpoint (config, safetensors, tokenizer files) that transformers loads.

    Writes into a temporary folder and renames it (jsonl.atomic_dir), so a crash never leaves a
    half-written checkpoint, nor loses the one it replaces.
    """
    out_dir = Path(out_dir)
    state = {}
    for name, p in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        t = p.detach().to("cpu", dtype=dtype or p.dtype).contiguous()
        state[name] = t
    shards, current, size = [], {}, 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
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
        hf = dict(model.config.hf)
        saved_dtype = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
        hf["torch_dtype"] = saved_dtype
        if "dtype" in hf:
            hf["dtype"] = saved_dtype
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        source = getattr(model, "source_dir", None)
        for name in TOKENIZER_FILES:
            if source is not None and (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, tmp / name)
    return out_dir
