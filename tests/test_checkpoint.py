"""Checkpoints: safetensors + JSON round trip, and clear errors for broken ones."""

import json

import pytest
import torch

from bincam.checkpoint import ModelCard, card_for, load_checkpoint, read_card, save_checkpoint
from bincam.errors import BincamError
from bincam.nets import build_net


def make(tmp_path, arch="small"):
    torch.manual_seed(1)
    model = build_net(arch, num_outputs=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    card = card_for(model, ["Male", "Smiling", "Young"], 64, positive_counts=[4, 5, 9],
                    negative_counts=[6, 5, 1], training={"seed": 0})
    return model, save_checkpoint(model, card, tmp_path / "ckpt")


@pytest.mark.parametrize("arch", ["small", "resnet18"])
def test_round_trip(tmp_path, arch):
    model, folder = make(tmp_path, arch)
    loaded = load_checkpoint(folder / "model.safetensors")
    assert not loaded.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    card = loaded.card
    assert card.attributes == ["Male", "Smiling", "Young"] and card.image_size == 64
    assert card.majority_is_positive() == [False, False, True]
    assert card.default_cam_layer == model.default_cam_layer
    assert json.loads((folder / "card.json").read_text())["format"] == "bincam-model-card/1"
    assert not list(folder.glob(".*tmp*"))


def test_broken_checkpoints(tmp_path):
    _, folder = make(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(BincamError, match="not a readable safetensors file"):
        load_checkpoint(folder)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(BincamError, match="not valid JSON"):
        read_card(folder)
    (folder / "card.json").unlink()
    with pytest.raises(BincamError, match="no card.json"):
        load_checkpoint(folder)
    with pytest.raises(BincamError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")


def test_weights_that_do_not_fit(tmp_path):
    _, folder = make(tmp_path)
    card = read_card(folder)
    card.arch["width"] = 8
    (folder / "card.json").write_text(card.to_json())
    with pytest.raises(BincamError, match="does not fit a small net"):
        load_checkpoint(folder)
    with pytest.raises(BincamError, match="not a bincam model card"):
        ModelCard.from_json('{"format": "other"}')
