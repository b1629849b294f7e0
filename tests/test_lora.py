"""LoRA layers against PEFT: same logits, the same files on disk both ways, exact merges, adapters off."""
import json

import pytest
import torch

import ssr
from hf_oracle import make_checkpoint
from ssr import lora

peft = pytest.importorskip("peft")
ALL = lora.MODULES


def ids(vocab=128, B=2, T=24, seed=3):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def randomise(model, seed=0):
    """Random A and B (a fresh B is zero, which would hide any mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.lora_parameters(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(params=["llama", "qwen2"])  # qwen2: biased q/k/v projections, tied embeddings
def tiny(request, tmp_path):
    folder = tmp_path / "base"
    hf = make_checkpoint(folder, request.param, tie_word_embeddings=request.param == "qwen2")
    return folder, hf


def test_fresh_lora_is_bit_identical_and_disabled_is_the_base(tiny):
    folder, _ = tiny
    model = ssr.load_model(folder)
    x = ids()
    with torch.no_grad():
        base = model(x)
        lora.apply_lora(model, r=4, alpha=8, targets=ALL)
        assert torch.equal(model(x), base)  # B = 0 adds exact zeros
        randomise(model)
        adapted = model(x)
        with lora.disabled(model):
            assert torch.equal(model(x), base)  # adapters off, no second copy of the model
        assert torch.equal(model(x), adapted)  # and on again after the block
    assert not torch.equal(adapted, base)
    assert set(lora.lora_modules(model)) == {f"model.layers.{i}.{blk}.{t}" for i in range(2) for t in ALL
                                             for blk in ["self_attn" if t in ALL[:4] else "mlp"]}


def test_only_lora_parameters_are_trainable(tiny):
    folder, _ = tiny
    model = lora.apply_lora(ssr.load_model(folder), r=4, targets=("q_proj", "down_proj"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in trainable)
    assert {id(p) for p in lora.lora_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()  # base keys unchanged


def test_saved_adapter_loads_in_peft_with_same_logits(tiny, tmp_path):
    folder, hf = tiny
    model = randomise(lora.apply_lora(ssr.load_model(folder), r=4, alpha=8, targets=ALL))
    lora.save_adapter(model, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["target_modules"] == list(ALL)
    x = ids()
    with torch.no_grad():
        base = hf(x).logits
        peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()  # wraps hf in place
        ours, ref = model(x), peft_model(x).logits
    assert (ours - ref).abs().max() <= 1e-4
    assert (ours - base).abs().max() > 1e-2  # the adapter really changes the output


def test_peft_saved_adapter_loads_in_ours(tiny, tmp_path):
    folder, hf = tiny
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["k_proj", "o_proj", "up_proj"], task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(hf, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path / "peft")
    model = lora.load_adapter(ssr.load_model(folder), tmp_path / "peft")
    x = ids()
    with torch.no_grad():
        assert (model(x) - peft_model.eval()(x).logits).abs().max() <= 1e-4


def test_load_adapter_round_trips(tiny, tmp_path):
    folder, _ = tiny
    model = randomise(lora.apply_lora(ssr.load_model(folder), r=4, alpha=8, dropout=0.1, targets=ALL)).eval()
    lora.save_adapter(model, tmp_path / "adapter")
    again = lora.load_adapter(ssr.load_model(folder), tmp_path / "adapter").eval()
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert next(iter(lora.lora_modules(again).values())).dropout == 0.1


def test_load_adapter_is_strict(tiny, tmp_path):
    folder, _ = tiny
    lora.save_adapter(lora.apply_lora(ssr.load_model(folder), r=4, targets=("q_proj", "v_proj")), tmp_path / "a")
    other = lora.apply_lora(ssr.load_model(folder), r=4, targets=("q_proj", "k_proj"))
    with pytest.raises(ValueError, match=r"missing tensor base_model\.model\.model\.layers\.0\.self_attn\.k_proj"
                                         r"(.|\n)*unexpected tensor .*v_proj"):
        lora.load_adapter(other, tmp_path / "a")
    with pytest.raises(ValueError, match="r=8"):
        lora.load_adapter(lora.apply_lora(ssr.load_model(folder), r=8, targets=("q_proj", "v_proj")), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown LoRA target"):
        lora.apply_lora(ssr.load_model(folder), targets=("qkv_proj",))


def test_merge_is_exact_and_idempotent(tiny, tmp_path):
    folder, hf = tiny
    model = randomise(lora.apply_lora(ssr.load_model(folder), r=4, alpha=8, targets=ALL))
    x = ids()
    with torch.no_grad():
        unmerged = model(x)
        lora.merge_lora(model)
        once = {k: v.clone() for k, v in model.state_dict().items()}
        merged = model(x)
        lora.merge_lora(model)
        twice = model.state_dict()
    assert not lora.lora_modules(model)
    assert (merged - unmerged).abs().max() <= 1e-5
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)
    assert set(once) == set(ssr.load_model(folder).state_dict())  # plain checkpoint keys, no lora_* left

    ssr.save_model(model, tmp_path / "merged")
    transformers = pytest.importorskip("transformers")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").float().eval()
    with torch.no_grad():
        assert (reloaded(x).logits - merged).abs().max() <= 1e-4


def test_dropout_only_on_the_lora_input(tiny):
    folder, _ = tiny
    model = lora.apply_lora(ssr.load_model(folder), r=4, dropout=0.5, targets=ALL).train()
    x = ids()
    with torch.no_grad():
        base = model.eval()(x)
        assert torch.equal(model.train()(x), base)  # B = 0: dropout must not touch the base path
        randomise(model)
        assert not torch.equal(model.train()(x), model.train()(x))  # LoRA input dropped at random
