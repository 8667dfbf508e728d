"""Loading analogs and any local causal LM offline, and the errors for what cannot load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from analoglab.config import Settings
from analoglab.errors import CorruptModelError, ModelNotFoundError
from analoglab.models.loading import load_analog, load_model


def _copy_home(src: Settings, tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path / "home")
    shutil.copytree(src.home, s.home)
    return s


def test_load_analog_offline_and_generate(tiny_home: Settings) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    loaded = load_analog("tiny-analog-m", device="cpu", settings=tiny_home)
    model, tokenizer = loaded  # unpacks like a (model, tokenizer) pair
    assert loaded.card is not None and loaded.card.frontier == "tiny-frontier"
    assert loaded.weights_sha256 == loaded.card.weights_sha256
    assert not model.training and loaded.device == torch.device("cpu")
    assert loaded.layout is not None and loaded.layout.verified  # checked at load
    enc = tokenizer(["the soup was", "When Mary and John went"], return_tensors="pt", padding=True)
    out = model.generate(
        **enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert out.shape == (2, enc["input_ids"].shape[1] + 4)


def test_load_model_takes_any_local_hf_causal_lm(tiny_home: Settings, tmp_path: Path) -> None:
    # A GPT-2 checkpoint that is not ours: config + weights + a tokenizer, loaded by path.
    folder = tmp_path / "gpt2-tiny"
    cfg = GPT2Config(vocab_size=384, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_home.lab_sites_path / "tiny-lab/models/tiny-frontier" / f, folder / f)
    loaded = load_model(folder, device="cpu")
    assert loaded.model.config.model_type == "gpt2" and loaded.card is None
    assert loaded.name == "gpt2-tiny" and len(loaded.weights_sha256) == 64
    assert loaded.layout is not None and loaded.layout.supports("attn.hook_z")
    assert load_model(folder, device="cpu", verify=False).layout is None
    # The frontier on the lab site loads the same way, by its path.
    frontier = load_model(tiny_home.lab_sites_path / "tiny-lab/models/tiny-frontier", device="cpu")
    assert frontier.model.config.num_hidden_layers == 2


def test_unknown_analog_names_what_exists(tiny_home: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match="no analog named 'tiny-analog-x'.*tiny-analog-m"):
        load_analog("tiny-analog-x", settings=tiny_home)


def test_missing_and_corrupt_folders(tmp_path: Path, tiny_home: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match="no model folder at"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptModelError, match="no config.json"):
        load_model(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_home.models_path / "tiny-analog-s", broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CorruptModelError, match="cannot be loaded"):
        load_model(broken, device="cpu")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CorruptModelError, match="has no weights"):
        load_model(broken, device="cpu")
    shutil.copytree(tiny_home.models_path / "tiny-analog-s", tmp_path / "badcfg")
    (tmp_path / "badcfg" / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(CorruptModelError, match="cannot be loaded"):
        load_model(tmp_path / "badcfg", device="cpu")


def test_weights_that_differ_from_the_card_are_refused(tiny_home: Settings, tmp_path: Path) -> None:
    s = _copy_home(tiny_home, tmp_path)
    other = s.models_path / "tiny-analog-m" / "model.safetensors"
    shutil.copy(other, s.models_path / "tiny-analog-s" / "model.safetensors")
    with pytest.raises(CorruptModelError, match="do not match its card"):
        load_analog("tiny-analog-s", device="cpu", settings=s)
