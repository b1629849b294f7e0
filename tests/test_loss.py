"""The loss sees exactly the assistant tokens and their EOS, and accumulation gives one batch's gradient."""
import shutil

import pytest
import torch
import torch.nn.functional as F

import ssr
from hf_oracle import make_checkpoint
from ssr import lora
from ssr import trainer
from ssr.trainer import Batch, Sample, collate, encode, epoch_batches, train_step

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."},
     {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": "Green."}],
    [{"role": "user", "content": "Привет! Say hi in French."}, {"role": "assistant", "content": "Salut ! 😀"}],
    [{"role": "user", "content": "Write a haiku about rain, please, a long one if you can."},
     {"role": "assistant", "content": "Soft rain on the roof\nthe gutter hums an old tune\nnight drinks all of it"}],
]


def mistral_dir(shared, tmp_path):
    src = shared / "tokenizers" / "Mistral-7B-Instruct-v0.2"
    shutil.copy(src / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(src / "tokenizer_config.reconstructed.json", tmp_path / "tokenizer_config.json")
    return tmp_path


def runs(mask):
    """[(start, end)] of the runs of 1s in a 0/1 list."""
    out, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("name", ["mistral", "qwen2.5"])
def test_supervised_tokens_are_the_assistant_turns_and_eos(shared, tmp_path, name):
    folder = mistral_dir(shared, tmp_path) if name == "mistral" else shared / "tokenizers" / "Qwen2.5-Instruct"
    tok = ssr.load_tokenizer(folder)
    eos = tok.tk.id_to_token(tok.eos_id)
    samples, cut = encode(tok, CONVERSATIONS, max_len=4096)
    assert cut == {"truncated": 0, "dropped": 0}
    seen = []
    for idx in epoch_batches([len(s.ids) for s in samples], batch_tokens=4096, max_seqs=3, seed=0, epoch=0):
        batch = collate([samples[i] for i in idx], pad_id=tok.pad_id or 0)
        ids, mask = batch.input_ids, batch.loss_mask
        for row, i in enumerate(idx):
            n = len(samples[i].ids)
            assert ids[row, :n].tolist() == samples[i].ids
            assert not mask[row, n:].any()  # padding is never supervised
            answers = [m["content"] for m in CONVERSATIONS[i] if m["role"] == "assistant"]
            spans = runs(mask[row].tolist())
            assert len(spans) == len(answers)  # no prompt token anywhere else
            for (a, b), answer in zip(spans, answers):
                assert ids[row, b - 1] == tok.eos_id  # every answer ends with its EOS, in the loss
                assert tok.decode(ids[row, a:b].tolist(), skip_special_tokens=False).strip() == answer + eos
            # the loss scores exactly these tokens, each predicted from the position before it
            keep = mask[row:row + 1, 1:].bool()
            assert ids[row:row + 1, 1:][keep].tolist() == [t for a, b in spans for t in ids[row, a:b].tolist()]
            seen.append(i)
    assert sorted(seen) == list(range(len(CONVERSATIONS)))


class FixedHidden(torch.nn.Module):
    """A stand-in model whose final hidden states are given."""

    def __init__(self, hidden, head):
        super().__init__()
        self.hidden, self.lm_head = hidden, head

    def hidden_states(self, input_ids):
        return self.hidden


def test_matches_full_logits_cross_entropy():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 9, 16)
    ids = torch.randint(0, 50, (3, 9))
    mask = (torch.rand(3, 9) > 0.4).long()
    labels = torch.where(mask.bool(), ids, -100)[:, 1:]
    ref = F.cross_entropy(head(hidden)[:, :-1].reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    model = FixedHidden(hidden, head)
    ours = trainer.loss(model, Batch(ids, mask, ["gold"] * 3), int(mask[:, 1:].sum()))
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_accumulation_equals_one_batch(tmp_path):
    """4 micro-batches of unequal lengths and target counts give the gradient of one padded batch."""
    make_checkpoint(tmp_path, "llama")
    g = torch.Generator().manual_seed(0)
    samples = []
    for n, start in [(7, 3), (19, 5), (12, 11), (30, 4)]:
        samples.append(Sample(torch.randint(0, 128, (n,), generator=g).tolist(), [0] * start + [1] * (n - start)))

    def update(windows):
        torch.manual_seed(0)
        model = lora.apply_lora(ssr.load_model(tmp_path), r=4, targets=lora.MODULES)
        with torch.no_grad():
            for p in lora.lora_parameters(model):
                p.normal_(0, 0.1)
        before = [p.detach().clone() for p in lora.lora_parameters(model)]
        opt = torch.optim.SGD(lora.lora_parameters(model), lr=1.0)  # the update is minus the gradient
        train_step(model, opt, [collate(w) for w in windows], lr=1.0, max_grad_norm=0)
        return torch.cat([(b - p.detach()).flatten() for b, p in zip(before, lora.lora_parameters(model))])

    one_batch = update([samples])
    accumulated = update([[s] for s in samples])
    assert one_batch.abs().max() > 0
    assert ((accumulated - one_batch).norm() / one_batch.norm()).item() <= 1e-5
