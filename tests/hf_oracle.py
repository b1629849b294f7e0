"""Tiny random HF checkpoints written by transformers itself: the reference side of parity tests."""
import json
from pathlib import Path

import torch

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)


def make_checkpoint(folder: Path, family: str = "llama", seed: int = 0, max_shard_size=None, **overrides):
    """Save a transformers model with every parameter randomised (norms and biases too) to `folder`.

    Returns the transformers model in float32 eval mode. Random norms and biases matter: at their
    default init (ones, zeros) a swapped norm or a dropped bias would go unnoticed.
    """
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in FAMILIES[family])
    config = config_cls(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return model


def rewrite_config(folder: Path, drop=(), **changes):
    """Edit a saved config.json in place: set `changes`, delete the keys in `drop`."""
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    for k in drop:
        cfg.pop(k, None)
    path.write_text(json.dumps(cfg, indent=2))
    return cfg
