"""The hand-written model computes what transformers computes, on tiny random checkpoints and a real one."""
import pytest
import torch

import ssr
from hf_oracle import make_checkpoint, rewrite_config

CASES = {
    "llama-untied-gqa2": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-head-dim": ("llama", {"head_dim": 16}),  # heads * head_dim != hidden_size
    "llama-kv1": ("llama", {"num_key_value_heads": 1}),
    "llama-mha": ("llama", {"num_key_value_heads": 8}),
    "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "llama3-rope": ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 16}}),
    "linear-rope": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}),
    "mistral-window": ("mistral", {"sliding_window": 16}),
    "mistral-no-window": ("mistral", {"sliding_window": None, "rope_parameters": {"rope_type": "default",
                                                                                  "rope_theta": 1e6}}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen2-untied": ("qwen2", {"tie_word_embeddings": False, "num_key_value_heads": 4}),
}


def batch(vocab=128, B=3, T=48, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(tmp_path, case):
    family, overrides = CASES[case]
    hf = make_checkpoint(tmp_path, family, **overrides)
    model = ssr.load_model(tmp_path)
    ids = batch()
    with torch.no_grad():
        ref, ours = hf(ids).logits, model(ids)
    assert ours.shape == ref.shape == (3, 48, 128)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_sharded_checkpoint(tmp_path):
    hf = make_checkpoint(tmp_path, "llama", max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = batch()
    with torch.no_grad():
        assert (ssr.load_model(tmp_path)(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_transformers4_style_config(tmp_path):
    """Every config on the hub today: rope_theta at top level, rope_scaling null, no rope_parameters."""
    hf = make_checkpoint(tmp_path, "llama", rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    cfg = rewrite_config(tmp_path, drop=("rope_parameters", "dtype"), rope_theta=5e5, rope_scaling=None,
                         transformers_version="4.44.0", torch_dtype="float32")
    assert "rope_parameters" not in cfg and cfg["rope_scaling"] is None
    model = ssr.load_model(tmp_path)
    assert model.config.rope_theta == 5e5
    ids = batch()
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_sliding_window_changes_logits(tmp_path):
    """The window is really applied: past the window the logits differ from full attention."""
    make_checkpoint(tmp_path, "mistral", sliding_window=16)
    windowed = ssr.load_model(tmp_path)
    rewrite_config(tmp_path, sliding_window=None)
    full = ssr.load_model(tmp_path)
    ids = batch(T=40)
    with torch.no_grad():
        a, b = windowed(ids), full(ids)
    assert (a[:, :16] - b[:, :16]).abs().max() <= 1e-5
    assert (a[:, 16:] - b[:, 16:]).abs().max() > 1e-3


def test_left_padding_matches_transformers(tmp_path):
    hf = make_checkpoint(tmp_path, "mistral", sliding_window=12)
    model = ssr.load_model(tmp_path)
    ids = batch(B=3, T=30)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    mask[2, :29] = 0  # a single real token
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        ours = model(ids, attention_mask=mask)
    assert torch.isfinite(ours).all()
    real = mask.bool()
    assert (ours[real] - ref[real]).abs().max() <= 1e-4


@pytest.mark.parametrize("family,overrides", [("qwen2", {}), ("mistral", {"sliding_window": 8})])
def test_kv_cache_incremental_equals_full_forward(tmp_path, family, overrides):
    make_checkpoint(tmp_path, family, **overrides)
    model = ssr.load_model(tmp_path)
    ids = batch(B=2, T=40)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(batch_size=2, max_len=64)
        pieces, start = [], 0
        for step in (11, 1, 1, 5, 1, 21):  # prefill, single-token decode, and chunks
            pieces.append(model(ids[:, start:start + step], cache=cache))
            start += step
    assert start == 40 and cache.length == 40
    assert (torch.cat(pieces, 1) - full).abs().max() <= 1e-4


def test_kv_cache_overflow_is_refused(tmp_path):
    make_checkpoint(tmp_path, "llama")
    model = ssr.load_model(tmp_path)
    cache = model.new_cache(batch_size=1, max_len=8)
    with torch.no_grad():
        model(batch(B=1, T=6), cache=cache)
        with pytest.raises(ValueError, match="KV cache overflow"):
            model(batch(B=1, T=3), cache=cache)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loading(tmp_path, dtype):
    hf = make_checkpoint(tmp_path, "qwen2", tie_word_embeddings=True)
    model = ssr.load_model(tmp_path, dtype=dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = batch(B=2, T=16)
    with torch.no_grad():
        ref = hf(ids).logits
        ours = model(ids).float()
    assert (ours - ref).abs().max() <= 0.1 * ref.abs().max()


def test_stories260k_greedy_matches_documented_ids(shared):
    """llama2.c's stories260K: greedy continuation of BOS, ids documented in its README."""
    folder = shared / "models" / "stories260K" / "hf"
    model = ssr.load_model(folder)
    ids = [1]
    with torch.no_grad():
        for _ in range(19):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert ids == [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267]
    tok = ssr.load_tokenizer(folder)
    assert tok.decode(ids).startswith("Once upon a time, there was a little girl named Lily.")
    with torch.no_grad():
        last = model(torch.tensor([[1, 403, 407, 261]]))[0, -1, :5]
    expected = torch.tensor([-6.7142535, -6.0530270, -6.7150375, -6.7144929, -6.7144302])
    assert (last - expected).abs().max() <= 1e-4
