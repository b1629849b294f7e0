"""Bad checkpoints fail loudly, naming the file, field or tensor at fault."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import ssr
from hf_oracle import make_checkpoint, rewrite_config
from conftest import ROOT


@pytest.fixture
def ckpt(tmp_path):
    make_checkpoint(tmp_path, "llama")
    return tmp_path


def edit_tensors(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ssr.load_model(tmp_path / "nowhere")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        ssr.load_model(ckpt)


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors.*pytorch_model\.bin"):
        ssr.load_model(ckpt)


@pytest.mark.parametrize("field,value,expected", [
    ("model_type", "gemma", "model_type='gemma'"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}, "rope type='yarn'"),
    ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope type='dynamic'"),
    ("quantization_config", {"quant_method": "awq"}, "quantization_config='awq'"),
    ("attention_dropout", 0.1, "attention_dropout=0.1"),
    ("layer_types", ["full_attention", "chunked_attention"], "layer_types entry='chunked_attention'"),
])
def test_unsupported_config_field_is_named(ckpt, field, value, expected):
    rewrite_config(ckpt, **{field: value})
    with pytest.raises(ValueError, match=f"config.json: unsupported {expected}".replace("(", r"\(").replace(
            ")", r"\)").replace(".", r"\.")):
        ssr.load_model(ckpt)


def test_missing_tensor(ckpt):
    edit_tensors(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight \(shape \(96, 64\)\)"):
        ssr.load_model(ckpt)


def test_unexpected_tensor(ckpt):
    edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected tensor model\.layers\.0\.self_attn\.extra\.weight"):
        ssr.load_model(ckpt)


def test_wrong_shape_names_both_shapes(ckpt):
    edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(8, 64)}))
    with pytest.raises(ValueError, match=r"k_proj\.weight in model\.safetensors has shape \(8, 64\), "
                                         r"the model expects \(16, 64\)"):
        ssr.load_model(ckpt)


def test_harmless_rotary_buffer_is_skipped(ckpt):
    edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}))
    ssr.load_model(ckpt)


def test_missing_shard_is_named(tmp_path):
    make_checkpoint(tmp_path, "llama", max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        ssr.load_model(tmp_path)


def test_missing_tokenizer_file(ckpt):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json in"):
        ssr.load_tokenizer(ckpt)


def test_import_does_not_pull_transformers_or_peft():
    """Every module of the package imports without the test-only oracles."""
    code = ("import pkgutil, importlib, sys, ssr\n"
            "for m in pkgutil.iter_modules(ssr.__path__): importlib.import_module('ssr.' + m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft', 'accelerate', 'datasets')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
