"""LoRA adapters on the attention and MLP projections, saved and loaded in PEFT's on-disk format.

`apply_lora` swaps each targeted nn.Linear for a LoRALinear that computes

    y = x W^T + b + (alpha / r) * B(A(dropout(x)))        A: (r, in), B: (out, r), B starts at zero

and freezes everything else. The base `weight` and `bias` stay the same Parameter objects under the
same names (checkpoint keys unchanged, nothing copied); A and B live in `q_proj.lora_A.weight` /
`q_proj.lora_B.weight`, PEFT's names minus its `base_model.model.` prefix. `disabled(model)` runs the
base model without a second copy. Adapters are float32 even on a bf16 base model, as in PEFT, so AdamW
never updates bf16 weights.

The trap avoided: merging `W += scale * B @ A` in bf16 rounds most of the small update away, and
merging a module twice adds it twice. `merge_lora` computes the sum in float32, casts once, and puts
a plain nn.Linear back in place, so a second merge finds nothing left to merge.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ssr.checkpoint import mismatch_error, open_safetensors, read_json
from ssr.model import Linear, linear

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # what LoRA can wrap
PEFT_PREFIX = "base_model.model."  # PEFT saves keys as base_model.model.<module path>.lora_A.weight
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameters: no copy, and the state-dict keys are unchanged
        self.register_parameter("bias", base.bias)
        self.r, self.alpha, self.dropout, self.scale = r, alpha, dropout, alpha / r
        kw = dict(bias=False, device=base.weight.device, dtype=torch.float32)
        self.lora_A = nn.Linear(self.in_features, r, **kw)  # kaiming-uniform init, as PEFT's
        self.lora_B = nn.Linear(r, self.out_features, **kw)
        nn.init.zeros_(self.lora_B.weight)  # a fresh adapter adds exact zeros: outputs are bit-identical
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False

    def forward(self, x):
        y = linear(x, self.weight, self.bias)  # exactly what the plain layer computes
        if self.disabled:
            return y
        h = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))  # (..., r)
        # scaling the rank-r activations, not the (..., out) output, saves a pass over the larger tensor
        return y + self.lora_B(h * self.scale).to(y.dtype)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, r={self.r}, alpha={self.alpha}, dropout={self.dropout}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:  # {module path: LoRALinear}, in model order
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def peft_tensors(model: nn.Module) -> dict[str, nn.Parameter]:
    """{PEFT key: A or B matrix}: the only parameters training updates, under the names PEFT saves them."""
    return {f"{PEFT_PREFIX}{name}.{ab}.weight": getattr(m, ab).weight
            for name, m in lora_modules(model).items() for ab in ("lora_A", "lora_B")}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = list(peft_tensors(model).values())
    if not params:
        raise ValueError("the model has no LoRA layers; call lora.apply_lora(model, ...) first")
    return params


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               targets=("q_proj", "v_proj")) -> nn.Module:
    """Put LoRA on every projection named in `targets` and freeze all other parameters, in place."""
    targets = tuple(targets)
    unknown = sorted(set(targets) - set(MODULES))
    if unknown or not targets:
        raise ValueError(f"unknown LoRA target(s) {unknown or '(none given)'}; choose from {', '.join(MODULES)}")
    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    if lora_modules(model):
        raise ValueError("the model already has LoRA layers (merge_lora them first to stack a new adapter)")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets:
            _replace(model, name, LoRALinear(m, r, alpha, dropout))
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


@contextmanager
def disabled(model: nn.Module):
    """Run the base model: every adapter is skipped inside the block (nothing is copied or merged)."""
    before = {m: m.disabled for m in lora_modules(model).values()}
    for m in before:
        m.disabled = True
    try:
        yield model
    finally:
        for m, d in before.items():
            m.disabled = d


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (in float32) and put plain, still frozen, Linear layers back."""
    for name, m in lora_modules(model).items():
        delta = (m.lora_B.weight.float() @ m.lora_A.weight.float()) * m.scale  # (out, in)
        m.weight.copy_((m.weight.float() + delta).to(m.weight.dtype))
        plain = Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        _replace(model, name, plain)
    return model


def save_adapter(model: nn.Module, out_dir) -> Path:
    """Write adapter_model.safetensors and the adapter_config.json PEFT 0.21 writes (the fields older PEFT and
    vLLM read too)."""
    modules = list(lora_modules(model).values())
    if not modules:
        raise ValueError("the model has no LoRA layers to save")
    r, alpha, dropout = modules[0].r, modules[0].alpha, modules[0].dropout
    if any((m.r, m.alpha, m.dropout) != (r, alpha, dropout) for m in modules):
        raise ValueError("PEFT's adapter_config.json holds one r/alpha/dropout, but the LoRA layers differ")
    present = {name.rpartition(".")[2] for name in lora_modules(model)}
    source = getattr(model, "source_dir", None)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(source) if source else None,
        "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": [t for t in MODULES if t in present],
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {key: p.detach().cpu().contiguous() for key, p in peft_tensors(model).items()}  # A (r, in), B (out, r)
    save_file(tensors, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out_dir


def _read_config(folder: Path) -> dict:
    """adapter_config.json, refusing any PEFT option that plain LoRA would silently ignore."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {folder} (expected a PEFT LoRA adapter folder)")
    cfg = read_json(path, "adapter config")
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type={cfg.get('peft_type')!r}; only LORA adapters are supported")
    plain = (("bias", "none"), ("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False),
             ("rank_pattern", {}), ("alpha_pattern", {}), ("layers_to_transform", None), ("modules_to_save", None))
    for key, default in plain:
        value = cfg.get(key) or default  # null, {} and false all mean "not used"
        if value != default:
            raise ValueError(f"{path}: unsupported {key}={value!r} (this loader reads plain LoRA: {key}={default!r})")
    targets = cfg.get("target_modules")  # a list, one name, or "all-linear": every linear layer but the head
    targets = list(MODULES) if targets == "all-linear" else [targets] if targets in MODULES else targets
    if not isinstance(targets, list) or not set(targets) <= set(MODULES):
        raise ValueError(f"{path}: target_modules={targets!r} is not a list drawn from {', '.join(MODULES)}")
    cfg["target_modules"] = targets
    return cfg


def load_adapter(model: nn.Module, adapter_dir) -> nn.Module:
    """Load an adapter saved by save_adapter or by PEFT; applies LoRA first if the model has none. Strict."""
    folder = Path(adapter_dir)
    cfg = _read_config(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder} (an adapter_model.bin from an old PEFT must be "
                                "converted to safetensors first)")
    if not lora_modules(model):
        apply_lora(model, r=cfg["r"], alpha=cfg["lora_alpha"], dropout=cfg.get("lora_dropout", 0.0),
                   targets=cfg["target_modules"])
    m0 = next(iter(lora_modules(model).values()))
    if (m0.r, m0.alpha) != (cfg["r"], cfg["lora_alpha"]):
        raise ValueError(f"{folder}: adapter has r={cfg['r']}, alpha={cfg['lora_alpha']}; the model's LoRA layers "
                         f"have r={m0.r}, alpha={m0.alpha}")
    expected = peft_tensors(model)
    with open_safetensors(folder / WEIGHTS_FILE) as f:
        loaded = {key: f.get_tensor(key) for key in sorted(f.keys())}
    problems = [f"missing tensor {key}" for key in expected if key not in loaded]
    for key, t in loaded.items():
        if key not in expected:
            problems.append(f"unexpected tensor {key}")
        elif t.shape != expected[key].shape:
            problems.append(f"tensor {key} has shape {tuple(t.shape)}, the model expects {tuple(expected[key].shape)}")
    if problems:
        raise mismatch_error(f"adapter {folder} does not match the model", problems)
    with torch.no_grad():
        for key, t in loaded.items():
            expected[key].copy_(t)
    return model
