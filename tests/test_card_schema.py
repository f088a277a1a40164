"""Checkpoint cards and weights are validated at the boundary: every broken card gets one line
naming the field (exit 2 in the CLI, nothing written), and no JSON at all makes the parser raise
anything but that error (Hypothesis)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincam.cli.model_cmd import card_rows
from bincam.core.model_info import ModelCard
from bincam.errors import BincamError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "models" / "synth-small-balanced"
BASE = json.loads((SMALL / "card.json").read_text())

CASES = {
    "39 names": (lambda d: d.update(attributes=d["attributes"][:39]),
                 "attributes: 39 names for a net with 40 outputs"),
    "41 names": (lambda d: d.update(attributes=d["attributes"] + ["Extra"]),
                 "attributes: 41 names for a net with 40 outputs"),
    "duplicate": (lambda d: d["attributes"].__setitem__(1, d["attributes"][0]),
                  "names repeat: 5_o_Clock_Shadow"),
    "attributes 5": (lambda d: d.update(attributes=5), "attributes: Input should be a valid list"),
    "size big": (lambda d: d.update(image_size="big"), "image_size: Input should be a valid int"),
    "size 0": (lambda d: d.update(image_size=0), "image_size: Input should be greater than"),
    "size -5": (lambda d: d.update(image_size=-5), "image_size: Input should be greater than"),
    "size 100000": (lambda d: d.update(image_size=100000), "image_size: Input should be less"),
    "arch string": (lambda d: d.update(arch="small"), "arch: Input should be a valid dict"),
    "arch unknown key": (lambda d: d["arch"].update(depth=3), "unknown key(s) depth for small"),
    "arch width": (lambda d: d["arch"].update(width="wide"), "width: 'wide' is not a whole"),
    "validation list": (lambda d: d.update(validation=[1]), "validation: Input should be a valid"),
    "pixel_range x": (lambda d: d.update(pixel_range="x"), "pixel_range: Input should be"),
    "pixel_range flat": (lambda d: d.update(pixel_range=[1, 1]), "is not an interval"),
    "mean short": (lambda d: d.update(mean=[0.5]), "mean: wrong number of values"),
    "std zero": (lambda d: d.update(std=[1, 0, 1]), "std: [1, 0, 1] must be positive"),
    "counts short": (lambda d: d.update(positive_counts=[1, 2]),
                     "positive_counts: needs one count"),
    "not json": (None, "is not valid JSON"),
    "validation epoch string": (lambda d: d["validation"].update(epoch="3"),
                                "validation.epoch: Input should be a valid integer"),
    "validation means string": (lambda d: d["validation"].update(means="x"),
                                "validation.means: Input should be a valid dictionary"),
    "validation mean string": (lambda d: d["validation"]["means"].update(error="low"),
                               "validation.means.error: Input should be a valid number"),
    "validation loss inf": (lambda d: d["validation"].update(loss=float("inf")),
                            "validation.loss: Input should be a finite number"),
    "validation mean inf": (lambda d: d["validation"]["means"].update(error=float("inf")),
                            "validation.means.error: an error rate is a number"),
    "training weighting": (lambda d: d["training"]["config"].update(weighting=1),
                           "training.config.weighting: Input should be 'none'"),
    "training history": (lambda d: d["training"].update(history={"a": 1}),
                         "training.history: Input should be a valid list"),
}


def _card_dir(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name.replace(" ", "_")
    shutil.copytree(SMALL, folder)
    edit, _ = CASES[name]
    if edit is None:
        (folder / "card.json").write_text("{ not json")
    else:
        data = copy.deepcopy(BASE)
        edit(data)
        (folder / "card.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_broken_cards_are_refused_in_one_line(tmp_path, name):
    folder = _card_dir(tmp_path, name)
    with pytest.raises(BincamError) as info:
        ModelCard.from_json((folder / "card.json").read_text(), "card.json")
    assert CASES[name][1] in str(info.value)


@pytest.mark.parametrize("command", ["info", "cam", "export"])
def test_cli_refuses_a_39_name_card_before_any_output(tmp_path, command):
    folder = _card_dir(tmp_path, "39 names")
    out = tmp_path / "out"
    args = {"info": [str(folder)],
            "cam": [str(folder), str(ROOT / "docs"), "--out", str(out)],
            "export": [str(folder), "--out", str(out / "m.onnx")]}[command]
    proc = subprocess.run([sys.executable, "-m", "bincam", command, *args], capture_output=True,
                          text=True, timeout=300)
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert text.startswith("error:") and text.count("error:") == 1
    assert "39 names for a net with 40 outputs" in text
    assert not out.exists()


def test_undefined_rates_as_training_writes_them_load_and_show_as_na():
    """``bincam train`` records NaN for a rate whose class had no validation samples
    (``core/metrics.py``); such a card is correct and must load (CI caught the refusal)."""
    data = copy.deepcopy(BASE)
    first = data["attributes"][0]
    data["validation"] = {"epoch": 0, "loss": 0.5, "means": {"fnr": float("nan"), "error": 0.25},
                          "per_attribute": {first: {"fnr": float("nan"), "fpr": 0.0}}}
    card = ModelCard.from_json(json.dumps(data), "card.json")  # json writes NaN as NaN
    rows = dict(card_rows(card, "weights"))
    assert rows["validation"] == "epoch 1: fnr n/a, error 0.250"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = st.sampled_from(["arch", "attributes", "image_size", "pixel_range", "mean", "std",
                          "cam_layers", "default_cam_layer", "positive_counts", "validation",
                          "training", "format", "input_fit", "bincam_version"])
BLOCK_KEYS = {"validation": st.sampled_from(["epoch", "loss", "means", "per_attribute", "x"]),
              "training": st.sampled_from(["config", "class_weights", "epoch", "history",
                                           "world_size", "device", "train_images", "source"])}


@settings(max_examples=1000, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(FIELDS, JSON, max_size=4))
def test_any_json_gives_a_card_or_one_clear_error(changes):
    data = dict(copy.deepcopy(BASE), **changes)
    try:
        card = ModelCard.from_json(json.dumps(data), "card.json")
    except BincamError as exc:
        assert str(exc).startswith("card.json")
        return
    assert len(card.attributes) == card.arch.get("num_outputs", 40)
    assert 8 <= card.image_size <= 2048
    assert card_rows(card, "weights")  # what `bincam info` shows can always be formatted


@settings(max_examples=600, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BLOCK_KEYS)).flatmap(
    lambda block: st.tuples(st.just(block), st.dictionaries(BLOCK_KEYS[block], JSON, max_size=3))))
def test_any_json_in_an_optional_block_gives_a_card_or_one_clear_error(change):
    """Any JSON under ``validation`` or ``training``: a card whose info rows format, or one error
    naming the block."""
    block, entries = change
    data = copy.deepcopy(BASE)
    data[block].update(entries)
    try:
        card = ModelCard.from_json(json.dumps(data), "card.json")
    except BincamError as exc:
        assert str(exc).startswith(f"card.json: {block}"), str(exc)
        return
    assert card_rows(card, "weights")


def test_the_schema_knows_every_training_weighting():
    from bincam.core.card_schema import WEIGHTINGS
    from bincam.training.weights import WEIGHTINGS as TRAINED

    assert WEIGHTINGS == TRAINED


def test_weights_must_be_finite_and_of_the_right_type(tmp_path):
    from safetensors.torch import load_file, save_file

    from bincam.checkpoint import load_checkpoint

    state = load_file(str(SMALL / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    for label, change, text in (("nan", lambda t: t.fill_(float("nan")), "holds NaN or Inf"),
                                ("int", lambda t: t.to(torch.int32), "is torch.int32")):
        folder = tmp_path / label
        shutil.copytree(SMALL, folder)
        broken = dict(state)
        broken[name] = change(broken[name].clone())
        save_file(broken, str(folder / "model.safetensors"))
        with pytest.raises(BincamError, match=f"tensor {name}.*{text}|tensor {name} {text}"):
            load_checkpoint(folder)
