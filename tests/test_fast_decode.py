"""The fixed-shape decode path (`static=True`): greedy ids equal the eager path's and transformers', batched and
one prompt at a time, with left padding and per-row stops; seeded sampling draws the same tokens as eager; a step
never asks the device for a value (so a CUDA graph can replay it) and its logits equal the full forward's."""
import pytest
import torch

import ssr
from hf_oracle import make_checkpoint
from ssr import lora, sampling
from ssr.model import KVCache
from ssr.sampling import complete, generate
from test_sampling import hf_greedy, random_prompts

N = 24


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2"])
def pair(request, tmp_path_factory):
    """(transformers model, our model, ten prompts of 1 to 40 tokens); mistral's window (16) is shorter than
    the longest sequence (40 + 24), so the mask's window over the whole buffer is exercised."""
    folder = tmp_path_factory.mktemp(request.param)
    overrides = {"sliding_window": 16} if request.param == "mistral" else {}
    hf = make_checkpoint(folder, request.param, **overrides)
    return hf, ssr.load_model(folder), random_prompts(hf.config.vocab_size)


def test_greedy_equals_eager_and_transformers(pair):
    hf, model, prompts = pair
    fast = generate(model, prompts, max_new_tokens=N, stop_ids=[], static=True)
    assert all(len(row) == N for row in fast)
    assert fast == generate(model, prompts, max_new_tokens=N, stop_ids=[])
    assert fast == hf_greedy(hf, prompts, N)
    assert fast == [generate(model, [p], max_new_tokens=N, stop_ids=[], static=True)[0] for p in prompts]


def test_per_row_stops_equal_eager_and_transformers(pair, monkeypatch):
    """Rows stop at different steps; the static path keeps every row in the step (no cache.keep) and still returns
    what eager and transformers return, stop ids and finish reasons included."""
    hf, model, prompts = pair
    full = generate(model, prompts, max_new_tokens=N, stop_ids=[])
    stops = {full[i][3 * i % N] for i in range(0, len(prompts), 2)}
    eager = complete(model, prompts, max_new_tokens=N, stop_ids=stops)
    monkeypatch.setattr(KVCache, "keep", lambda *a: pytest.fail("the static path dropped cache rows"))
    fast = complete(model, prompts, max_new_tokens=N, stop_ids=stops, static=True)
    assert fast == eager
    assert [c.tokens for c in fast] == hf_greedy(hf, prompts, N, eos=stops)
    assert len({len(c.tokens) for c in fast if c.finish_reason == "stop"}) >= 3  # stopped at different steps
    assert sum(c.finish_reason == "length" for c in fast) >= 1
    assert fast == [complete(model, [p], max_new_tokens=N, stop_ids=stops, static=True)[0] for p in prompts]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.0, 0, 0.8), (1.3, 30, 0.9)])
def test_seeded_sampling_equals_eager(pair, temperature, top_k, top_p):
    """Eager drops finished rows and then samples fewer rows; the static path samples the same rows, so a seed
    gives the same tokens even when rows stop at different steps."""
    _, model, prompts = pair
    kw = dict(max_new_tokens=N, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    eager = generate(model, prompts, stop_ids=[], **kw)
    assert generate(model, prompts, stop_ids=[], static=True, **kw) == eager
    assert eager != generate(model, prompts, max_new_tokens=N, stop_ids=[])  # it did sample
    stops = {eager[i][2 * i % N] for i in range(0, len(prompts), 2)}
    eager = complete(model, prompts, stop_ids=stops, **kw)
    assert complete(model, prompts, stop_ids=stops, static=True, **kw) == eager
    assert sum(c.finish_reason == "stop" for c in eager) > len(prompts) // 2


def test_step_is_sync_free_and_its_logits_equal_the_full_forward(pair, monkeypatch):
    """After the eager prefill, each fixed-shape step reads no value back from the device (what capture into a
    CUDA graph requires) and gives every row the logits of its own full forward; rows are left-padded."""
    _, model, prompts = pair
    prompts = sorted(prompts, key=len, reverse=True)
    B, T, steps = len(prompts), len(prompts[0]), 6
    new = torch.randint(3, model.config.vocab_size, (B, steps), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache, ids, step = sampling._static_decoder(model, B, T + steps)
        got = [sampling._prefill(model, prompts, cache)]
        cache.slot.fill_(T)
        with monkeypatch.context() as m:
            for name in ("__bool__", "item", "tolist", "__int__", "__index__"):
                m.setattr(torch.Tensor, name, lambda *a, name=name: pytest.fail(f"a step called Tensor.{name}"))
            for t in range(steps):
                ids.copy_(new[:, t:t + 1])
                got.append(step())
        assert ids.shape == (B, 1) and int(cache.slot) == T + steps
        got = torch.stack(got, 1)  # (B, steps + 1, V)
        for i, p in enumerate(prompts):
            full = model(torch.tensor([p + new[i].tolist()]))[0, len(p) - 1:]
            assert (got[i] - full).abs().max() <= 1e-4


def test_edge_cases(pair):
    _, model, prompts = pair
    assert generate(model, prompts[:2], max_new_tokens=0, static=True) == [[], []]
    assert generate(model, [], max_new_tokens=4, static=True) == []
    one = generate(model, prompts, max_new_tokens=1, stop_ids=[], static=True)
    assert one == [row[:1] for row in generate(model, prompts, max_new_tokens=N, stop_ids=[])]
    assert generate(model, prompts, max_new_tokens=N, stop_ids=[], batch_size=3, static=True) == generate(
        model, prompts, max_new_tokens=N, stop_ids=[])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_gpu_graphs_are_reused_and_recaptured(tmp_path):
    """CUDA: one capture per (batch, bucket), reused by the next call; a LoRA switch or new weights recapture."""
    hf = make_checkpoint(tmp_path, "qwen2").cuda()
    prompts = random_prompts(128)
    model = ssr.load_model(tmp_path, device="cuda")
    fast = generate(model, prompts, max_new_tokens=N, stop_ids=[], static=True)
    assert fast == generate(model, prompts, max_new_tokens=N, stop_ids=[]) == hf_greedy(hf, prompts, N)
    stops = {fast[i][3 * i % N] for i in range(0, len(prompts), 2)}
    assert complete(model, prompts, max_new_tokens=N, stop_ids=stops, static=True) == complete(
        model, prompts, max_new_tokens=N, stop_ids=stops)
    kw = dict(max_new_tokens=N, temperature=1.0, top_k=20, top_p=0.9, stop_ids=[], seed=5)
    assert generate(model, prompts, static=True, **kw) == generate(model, prompts, **kw)
    assert len(model._static_decoders) == 1  # every call above: batch 10, 40 + 24 - 1 slots -> one 256 bucket

    lora.apply_lora(model, r=4, alpha=8)
    for m in lora.lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.05)
    with_adapter = generate(model, prompts, max_new_tokens=N, stop_ids=[], static=True)
    assert with_adapter == generate(model, prompts, max_new_tokens=N, stop_ids=[]) != fast
    with lora.disabled(model):
        assert generate(model, prompts, max_new_tokens=N, stop_ids=[], static=True) == fast

    half = ssr.load_model(tmp_path, device="cuda", dtype=torch.bfloat16)
    assert all(len(row) == N for row in generate(half, prompts, max_new_tokens=N, stop_ids=[], static=True))
