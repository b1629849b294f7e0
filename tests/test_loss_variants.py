"""The loss variants of docs/loss.md, run as written there: each ```python block is extracted and executed,
and its function swapped in for ssr.trainer.loss."""
import re
from pathlib import Path

import pytest
import torch

import ssr
from hf_oracle import make_checkpoint
from ssr import lora, trainer
from ssr.trainer import Sample, collate, train_step

DEFAULT = trainer.loss  # taken before any block has replaced it
DOC = Path(__file__).resolve().parents[1] / "docs" / "loss.md"


def run_blocks() -> dict[str, dict]:
    """{function name: the namespace of the block defining it}. Each block ends by assigning its function to
    ssr.trainer.loss; the default is put back afterwards."""
    spaces = {}
    try:
        for code in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL):
            ns = {"__name__": "docs_loss_md"}
            exec(compile(code, str(DOC), "exec"), ns)
            name = next(k for k, v in ns.items() if callable(v) and v is trainer.loss)  # the block swapped it in
            spaces[name] = ns
    finally:
        trainer.loss = DEFAULT
    return spaces


@pytest.fixture(scope="module")
def doc():
    return run_blocks()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    make_checkpoint(folder, "llama")
    return folder


def make_model(checkpoint, perturb=True):
    """A tiny llama with LoRA on every projection, no dropout; the same adapter on every call."""
    torch.manual_seed(0)
    model = lora.apply_lora(ssr.load_model(checkpoint), r=4, dropout=0.0, targets=lora.MODULES)
    if perturb:  # a trained-looking adapter: B != 0, so A gets gradients too and model != base
        with torch.no_grad():
            for p in lora.lora_parameters(model):
                p.normal_(0, 0.1)
    return model


def make_samples(sources, seed=0):
    """Random token sequences of different lengths, the last part of each supervised."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(9, 3), (21, 5), (14, 11), (30, 4), (6, 2), (17, 9)]
    return [Sample(torch.randint(0, 128, (n,), generator=g).tolist(), [0] * start + [1] * (n - start), source)
            for (n, start), source in zip(shapes, sources)]


def step(monkeypatch, model, loss_fn, windows, opt=None):
    """One train_step with loss_fn swapped in; returns (the step's loss, the change of every LoRA parameter).
    The default optimizer is SGD at lr 1 without clipping, so the change is minus the gradient."""
    monkeypatch.setattr(trainer, "loss", loss_fn)
    params = lora.lora_parameters(model)
    before = [p.detach().clone() for p in params]
    opt = opt or torch.optim.SGD(params, lr=1.0)
    stats = train_step(model, opt, [collate(w) for w in windows], lr=opt.param_groups[0]["lr"], max_grad_norm=0)
    return stats["loss"], torch.cat([(p.detach() - b).flatten() for b, p in zip(before, params)])


def same_step(monkeypatch, checkpoint, loss_a, loss_b, windows, perturb=True):
    loss1, update1 = step(monkeypatch, make_model(checkpoint, perturb), loss_a, windows)
    loss2, update2 = step(monkeypatch, make_model(checkpoint, perturb), loss_b, windows)
    assert update1.abs().max() > 1e-4  # the comparison is not vacuous
    assert loss1 == pytest.approx(loss2, abs=1e-6)
    assert (update1 - update2).abs().max().item() <= 1e-6


MIXED = ["gold", "self", "paraphrase", "rewrite", "gold", "self"]


def test_every_block_defines_a_loss(doc):
    assert set(doc) == {"my_loss", "kl_loss", "weighted_loss", "per_sequence_loss"}


def test_the_script_template_is_the_default(monkeypatch, checkpoint, doc):
    samples = make_samples(MIXED)
    same_step(monkeypatch, checkpoint, DEFAULT, doc["my_loss"]["my_loss"], [samples[:3], samples[3:]])


# ---- (b) a weight per source


def test_weight_one_everywhere_is_the_default(monkeypatch, checkpoint, doc):
    ns = doc["weighted_loss"]
    monkeypatch.setitem(ns, "SOURCE_WEIGHT", {s: 1.0 for s in ns["SOURCE_WEIGHT"]})
    samples = make_samples(MIXED)
    same_step(monkeypatch, checkpoint, DEFAULT, ns["weighted_loss"], [samples[:3], samples[3:]])


def test_gold_weight_zero_leaves_gold_rows_untaught(monkeypatch, checkpoint, doc):
    ns = doc["weighted_loss"]
    monkeypatch.setitem(ns, "SOURCE_WEIGHT", {**ns["SOURCE_WEIGHT"], "gold": 0.0})
    for source, moves in [("gold", False), ("self", True)]:
        samples = make_samples([source] * 4)
        model = make_model(checkpoint)
        opt = trainer.make_optimizer(model, trainer.TrainConfig(lr=1e-2))  # AdamW, as training uses
        _, update = step(monkeypatch, model, ns["weighted_loss"], [samples[:2], samples[2:]], opt)
        assert (update.abs().max().item() > 0) == moves, source


def test_documented_weights_halve_gold(monkeypatch, checkpoint, doc):
    """gold 0.5: a gold-only step is half the default step, a self-only step is the default step."""
    ns = doc["weighted_loss"]
    for source, factor in [("gold", 0.5), ("self", 1.0)]:
        samples = make_samples([source] * 4)
        loss1, update1 = step(monkeypatch, make_model(checkpoint), DEFAULT, [samples])
        loss2, update2 = step(monkeypatch, make_model(checkpoint), ns["weighted_loss"], [samples])
        assert loss2 == pytest.approx(factor * loss1, rel=1e-6)
        assert (update2 - factor * update1).abs().max().item() <= 1e-6


# ---- (a) cross-entropy + beta * KL to the base model


def test_kl_beta_zero_is_the_default(monkeypatch, checkpoint, doc):
    ns = doc["kl_loss"]
    monkeypatch.setitem(ns, "BETA", 0.0)
    samples = make_samples(MIXED)
    same_step(monkeypatch, checkpoint, DEFAULT, ns["kl_loss"], [samples[:3], samples[3:]])


def test_kl_is_zero_with_zero_gradient_on_a_fresh_adapter(monkeypatch, checkpoint, doc):
    """LoRA B = 0: the model is the base model, so the KL term and its gradient vanish; the CE is unchanged."""
    ns = doc["kl_loss"]
    monkeypatch.setitem(ns, "BETA", 1.0)
    samples = make_samples(MIXED)
    same_step(monkeypatch, checkpoint, DEFAULT, ns["kl_loss"], [samples[:3], samples[3:]], perturb=False)


def test_kl_is_positive_once_the_adapter_moved(monkeypatch, checkpoint, doc):
    ns = doc["kl_loss"]
    monkeypatch.setitem(ns, "BETA", 1.0)
    samples = make_samples(MIXED)
    batch = collate(samples)
    n_tokens = int(batch.loss_mask[:, 1:].sum())
    model = make_model(checkpoint)
    with torch.no_grad():
        kl = ns["kl_loss"](model, batch, n_tokens) - DEFAULT(model, batch, n_tokens)
        with lora.disabled(model):  # the base model itself is at KL 0
            assert (ns["kl_loss"](model, batch, n_tokens) - DEFAULT(model, batch, n_tokens)).abs() <= 1e-6
    assert kl > 1e-3
    assert all(not p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)


# ---- (c) per-sequence mean


def test_per_sequence_mean_weighs_a_long_and_a_short_example_equally(monkeypatch, checkpoint, doc):
    """One step on [long, short] is the average of one step on each alone (each alone: its mean token loss),
    where the default weighs them by their numbers of tokens."""
    ns = doc["per_sequence_loss"]
    monkeypatch.setitem(ns, "SEQUENCES_PER_STEP", 2)
    long, short = make_samples(["gold", "self", "gold", "gold"])[3:1:-1]  # 26 and 3 supervised tokens
    loss_long, update_long = step(monkeypatch, make_model(checkpoint), DEFAULT, [[long]])
    loss_short, update_short = step(monkeypatch, make_model(checkpoint), DEFAULT, [[short]])
    loss_pair, update_pair = step(monkeypatch, make_model(checkpoint), ns["per_sequence_loss"], [[long, short]])
    assert loss_pair == pytest.approx((loss_long + loss_short) / 2, rel=1e-6)
    assert (update_pair - (update_long + update_short) / 2).abs().max().item() <= 1e-6
    # the default: 26 to 3
    loss_default, update_default = step(monkeypatch, make_model(checkpoint), DEFAULT, [[long, short]])
    assert loss_default == pytest.approx((26 * loss_long + 3 * loss_short) / 29, rel=1e-6)
    assert (update_default - update_pair).abs().max().item() > 1e-4


def test_per_sequence_mean_equals_the_default_for_equal_lengths(monkeypatch, checkpoint, doc):
    ns = doc["per_sequence_loss"]
    g = torch.Generator().manual_seed(1)
    samples = [Sample(torch.randint(0, 128, (12,), generator=g).tolist(), [0] * 4 + [1] * 8) for _ in range(4)]
    monkeypatch.setitem(ns, "SEQUENCES_PER_STEP", 4)
    same_step(monkeypatch, checkpoint, DEFAULT, ns["per_sequence_loss"], [samples[:2], samples[2:]])
