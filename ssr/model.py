"""A Llama / Mistral / Qwen2 decoder in one file, with a preallocated KV cache.

One forward path serves training (whole sequences), prefill and decode (a few new tokens appended
to the cache). Parameter names are the HF ones (`model.layers.0.self_attn.q_proj.weight`, ...) so
checkpoints load by key; `ssr.checkpoint` translates an HF config.json into `ModelConfig`. Traps avoided:
- HF checkpoints store q/k in the "rotate-half" RoPE layout (first half of each head paired with the
  second half), not interleaved pairs; `apply_rope` follows that layout.
- Left-padded batches: a padding query whose keys are all masked makes SDPA return NaN, which then
  leaks through the cache. Every query is allowed to see its own slot, so no row is ever all -inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)  # {"rope_type": "linear"|"llama3", "factor": ...}; {} = none
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # qwen2: q/k/v have biases, o does not
    o_bias: bool = False  # llama's attention_bias puts a bias on q, k, v and o
    mlp_bias: bool = False
    # per layer: None = full causal attention, n = each query sees its last n keys (itself included)
    layer_windows: list[int | None] = field(default_factory=list)
    max_position_embeddings: int = 4096  # the context the model was trained for; prompts beyond it are refused
    eos_token_id: int | list[int] | None = None  # the sampler's default stop

    def __post_init__(self):
        if not self.layer_windows:
            self.layer_windows = [None] * self.num_hidden_layers
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()  # the variance in float32, as every reference implementation does
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_frequencies(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) in float32, with linear or llama3 scaling applied."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    s = cfg.rope_scaling
    if s.get("rope_type") == "linear":
        inv_freq = inv_freq / s["factor"]
    elif s.get("rope_type") == "llama3":
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def apply_rope(x, cos, sin):
    # x (B, H, T, D); cos, sin (B, 1, T, D). Rotate-half layout: pair i with i + D/2.
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Keys and values of every layer in one preallocated buffer. Rows are aligned by slot (slot j of every row
    was written by the same forward), so left padding lives in the cache as invalid slots, and `next_pos` keeps
    each row's own RoPE position. Only these methods change it: the model calls `begin`, `write` and `advance`
    once per forward, the sampler `rows`, `filled` and `keep`.

    Fixed-shape decoding (the sampler's `static` path) sets `slot`, a (1,) tensor: each forward then writes its one
    token per row at that slot and returns the whole buffer, which the mask limits to the written slots, so every
    step has the same shapes and ops, and needs no host value: a CUDA graph replays it, advancing `slot` itself."""

    slot: torch.Tensor | None = None  # None: ordinary decoding at `length`, appended slices

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device="cpu"):
        shape = (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, Hkv, S, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # slot holds a real token
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # RoPE position of the next token
        self.length = 0  # slots written so far, the same for every row
        # Some written slot holds no token (left padding). A Python bool, learnt when a mask is passed (prefill),
        # so that decoding never waits for the device just to find out that it needs no mask.
        self.padded = False

    def begin(self, new_valid: torch.Tensor, masked: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Claim the next T slots for tokens marked by new_valid (B, T); returns the valid keys (B, S) and the
        new tokens' positions (B, T). `masked`: the caller passed an attention mask, so padding may appear."""
        T, max_len = new_valid.shape[1], self.k.shape[3]
        if self.slot is not None:  # T is 1; the sampler sized the buffer, so that slot < max_len
            self.valid.index_copy_(1, self.slot, new_valid)
            return self.valid, self.next_pos[:, None] + new_valid.long().cumsum(1) - 1
        if self.length + T > max_len:
            raise ValueError(f"KV cache overflow: {self.length} + {T} tokens > max_len {max_len}")
        self.valid[:, self.length:self.length + T] = new_valid
        valid = self.valid[:, :self.length + T]
        if masked:
            self.padded = not bool(valid.all())
        return valid, self.next_pos[:, None] + new_valid.long().cumsum(1) - 1

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values (B, Hkv, T, D); returns all of that layer's so far (B, Hkv, S, D)."""
        if self.slot is not None:
            self.k[layer].index_copy_(2, self.slot, k)
            self.v[layer].index_copy_(2, self.slot, v)
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, new_valid: torch.Tensor) -> None:
        """The forward that began with `begin(new_valid)` has written every layer."""
        self.length += new_valid.shape[1]  # a host count, not replayed by a CUDA graph: the tensor `slot` is
        self.next_pos += new_valid.sum(1)
        if self.slot is not None:
            self.slot += 1

    def rows(self, a: int, b: int, length: int) -> KVCache:
        """A view of rows a:b (the same buffers) whose next write lands at slot `length`: the sampler prefills
        shorter prompts right-aligned, each group of similar length through its own view."""
        view = object.__new__(KVCache)
        view.k, view.v = self.k[:, a:b], self.v[:, a:b]
        view.valid, view.next_pos = self.valid[a:b], self.next_pos[a:b]
        view.length, view.padded = length, False
        return view

    def filled(self, length: int) -> None:
        """After prefilling through `rows` views: every row now ends at slot `length`."""
        self.length = length
        self.padded = not bool(self.valid[:, :length].all())  # groups shorter than `length` leave slots unwritten

    def keep(self, keep: torch.Tensor) -> None:
        """Shrink to the rows where keep (B,) is True; every row's slots stay where they were."""
        self.k, self.v = self.k[:, keep], self.v[:, keep]
        self.valid, self.next_pos = self.valid[keep], self.next_pos[keep]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, self.n_head * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=cfg.o_bias)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, Hkv, S, D)
        # mask is None only where plain causal attention is exact (see Transformer._masks)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.n_head != self.n_kv_head)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        ))
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.checkpointing = False  # recompute each block in backward to save activation memory
        self._inv_freq = {}  # per device; kept out of the state dict and of .to(dtype)
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, max_len, dtype=p.dtype, device=p.device)

    def _rope(self, positions, dtype):
        inv_freq = self._inv_freq.get(positions.device)
        if inv_freq is None:
            inv_freq = self._inv_freq[positions.device] = rope_frequencies(self.config, positions.device)
        freqs = positions[..., None].float() * inv_freq  # (B, T, D/2), in float32 for long positions
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _masks(self, T: int, valid, all_valid: bool, cache: KVCache | None):
        """{window: boolean mask (B, 1, T, S), or None where is_causal is exact}. valid (B, S) marks the key slots
        holding real tokens (all of them, if all_valid); the new queries sit in the last T slots."""
        S, static = valid.shape[1], cache is not None and cache.slot is not None  # static: S is the whole buffer
        masks = {}
        for window in set(self.config.layer_windows):
            needs_window = window is not None and window < S
            if all_valid and not needs_window and not static and (cache is None or cache.length == 0 or T == 1):
                masks[window] = None  # plain causal (or, for one new token, attend to everything)
                continue
            q = cache.slot[:, None] if static else torch.arange(S - T, S, device=valid.device)[:, None]  # (T, 1) slots
            k = torch.arange(S, device=valid.device)[None, :]  # (1, S) key slots
            allowed = k <= q
            if needs_window:
                allowed = allowed & (q - k < window)
            allowed = (allowed[None] & valid[:, None, :]) | (k == q)[None]  # (B, T, S); a query always sees itself
            masks[window] = allowed[:, None]
        return masks

    def forward(self, input_ids, *, attention_mask=None, positions=None, cache: KVCache | None = None,
                last_only: bool = False):
        """input_ids (B, T) -> logits (B, T, vocab), or (B, 1, vocab) with last_only.

        attention_mask (B, T): 1 for real tokens, 0 for padding (left or right). With a cache, the new
        tokens are appended after `cache.length` slots and attend to everything cached before them.
        """
        x = self.hidden_states(input_ids, attention_mask=attention_mask, positions=positions, cache=cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)

    def hidden_states(self, input_ids, *, attention_mask=None, positions=None, cache: KVCache | None = None):
        """input_ids (B, T) -> final normed hidden states (B, T, C), the input of lm_head (which the loss applies
        only where it scores a token, see ssr/trainer.py)."""
        B, T = input_ids.shape
        new_valid = (torch.ones(B, T, dtype=torch.bool, device=input_ids.device) if attention_mask is None
                     else attention_mask.bool())
        if cache is not None:
            valid, own_positions = cache.begin(new_valid, masked=attention_mask is not None)
            all_valid = not cache.padded
        else:
            valid, own_positions = new_valid, new_valid.long().cumsum(1) - 1
            all_valid = attention_mask is None or bool(new_valid.all())
        # clamp: the padding slots before a row's first token get position 0
        positions = (own_positions if positions is None else positions).clamp(min=0)
        masks = self._masks(T, valid, all_valid, cache)

        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self._rope(positions, x.dtype)
        for i, block in enumerate(self.model.layers):
            mask = masks[self.config.layer_windows[i]]
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, cache, i, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.advance(new_valid)
        return self.model.norm(x)


# --------------------------------------------------------------------------------------------------------
# CPU decoding: a faster product for a few rows


def linear(x, weight, bias=None):
    """x @ weight.T + bias, as F.linear, but faster for 1 to 8 rows of float32 on CPU (decoding), where the MKL
    build of PyTorch's CPU wheel takes a slow path: weight @ x.T streams the weights faster, and for one row
    against a large matrix (an lm_head) a product with the row twice beats the matrix-vector product."""
    rows = x.numel() // x.shape[-1]
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or rows > 8
            or (rows == 1 and weight.numel() < 2**24)):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])  # (N, in)
    if rows == 1:
        flat = torch.cat([flat, flat])
    y = (weight @ flat.T).T[:rows].reshape(*x.shape[:-1], weight.shape[0])  # (..., out)
    return y if bias is None else y + bias


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) that computes with `linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
