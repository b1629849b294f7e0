"""Model configuration read from an HF `config.json` (llama, mistral, qwen2).

The trap avoided: a field we do not implement (a RoPE scaling type, an activation, quantisation,
attention dropout) would still load and produce fluent but wrong text. Every field that changes the
math is either implemented here or refused with an error naming the field and its value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "llama"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)  # {"rope_type": "linear"|"llama3", "factor": ...}; {} = none
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # qwen2: q/k/v have biases, o does not
    o_bias: bool = False  # llama's attention_bias puts a bias on q, k, v and o
    mlp_bias: bool = False
    # per layer: None = full causal attention, n = each query sees its last n keys (itself included)
    layer_windows: list[int | None] = field(default_factory=list)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    hf: dict = field(default_factory=dict, repr=False)  # the config.json this came from, for re-export

    def __post_init__(self):
        if not self.layer_windows:
            self.layer_windows = [None] * self.num_hidden_layers
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")

    @classmethod
    def from_hf(cls, cfg: dict, source: str = "config.json") -> "ModelConfig":
        """Translate an HF config dict, refusing anything that would silently change the math."""
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
        if rope_type not in ROPE_TYPES:
            refuse("rope type", rope_type, f"supported: {', '.join(ROPE_TYPES)}")
        scaling = {}
        if rope_type != "default":
            keys = {"linear": ("factor",),
                    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
            missing = [k for k in keys[rope_type] if k not in rope]
            if missing:
                raise ValueError(f"{source}: rope type {rope_type!r} needs {missing}")
            scaling = {"rope_type": rope_type, **{k: rope[k] for k in keys[rope_type]}}

        heads = cfg["num_attention_heads"]
        kv_heads = cfg.get("num_key_value_heads") or heads
        n_layers = cfg["num_hidden_layers"]

        # Which layers use a sliding window, and how wide it is.
        window = cfg.get("sliding_window")
        if model_type == "llama":
            window = None  # llama has no sliding window; the field, if present, is unused by transformers
        if model_type == "qwen2" and not cfg.get("use_sliding_window", False):
            window = None
        if window is not None and (not isinstance(window, int) or window <= 0):
            refuse("sliding_window", window, "expected a positive integer or null")
        layer_types = cfg.get("layer_types")
        if layer_types is None:
            if model_type == "qwen2":  # as transformers: sliding layers start at max_window_layers
                first = cfg.get("max_window_layers", n_layers)
                layer_types = ["sliding_attention" if window and i >= first else "full_attention"
                               for i in range(n_layers)]
            else:
                layer_types = ["sliding_attention" if window else "full_attention"] * n_layers
        if len(layer_types) != n_layers:
            raise ValueError(f"{source}: layer_types has {len(layer_types)} entries for {n_layers} layers")
        windows = []
        for kind in layer_types:
            if kind not in ("full_attention", "sliding_attention"):
                refuse("layer_types entry", kind, "supported: full_attention, sliding_attention")
            windows.append(window if kind == "sliding_attention" and window else None)

        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            model_type=model_type,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            layer_windows=windows,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            hf=dict(cfg),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
        return cls.from_hf(cfg, source=str(path))
