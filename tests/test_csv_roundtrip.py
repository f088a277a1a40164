"""Round trips on a CSV dataset: synthetic lesion task with boxes → train (none, moon; K = 1) →
analyze (PE against each image's own boxes, checked at full resolution; fixed label masks for a
K = 2 dataset) → export → ORT ``cam`` on an image of another size → serving handler."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bincam.analysis import AnalyzeOptions, analyze
from bincam.checkpoint import card_for, save_checkpoint
from bincam.core.energy import proportional_energy_full
from bincam.core.epilogue import epilogue
from bincam.data.csvset import CsvDataset
from bincam.data.synth_task import synthesize_task
from bincam.nets import build_net
from bincam.training import TrainConfig, train

SIZE = 32


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task") / "lesion"
    return synthesize_task(root, 150, seed=2, size=40, prevalence=0.2, confound=0.5)


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for weighting in ("none", "moon"):
        train(TrainConfig(data=f"csv:{task}", out=str(out / weighting), width=4, epochs=2,
                          batch_size=30, image_size=SIZE, weighting=weighting, threads=2,
                          decode_workers=1))
    return out


def _bincam(*args):
    return subprocess.run([sys.executable, "-m", "bincam", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def _columns(out, name):
    folder = out / "results" / name
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def test_training_records_labels_fit_and_moon_weights(trained):
    card = json.loads((trained / "moon" / "card.json").read_text())
    assert card["attributes"] == ["lesion"] and card["arch"]["num_outputs"] == 1
    assert card["input_fit"] == "stretch" and card["image_size"] == SIZE
    assert card["positive_counts"] == [24] and card["negative_counts"] == [96]
    weights = card["training"]["class_weights"]
    assert weights["positive"] == [1.0] and weights["negative"] == pytest.approx([24 / 96])
    assert card["training"]["dataset"]["kind"] == "csv"
    none = json.loads((trained / "none" / "card.json").read_text())["training"]["class_weights"]
    assert none == {"positive": [1.0], "negative": [1.0]}


def test_audit_pe_against_each_images_boxes(tmp_path, task, trained):
    out = tmp_path / "audit"
    record = analyze(AnalyzeOptions([f"unbalanced={trained / 'none'}",
                                     f"moon={trained / 'moon'}"], f"csv:{task}", out,
                                    split="all", engine="torch", batch_size=25, shard_size=50,
                                    save_maps=True))
    ds = CsvDataset(task)
    regions = np.stack([ds.regions(i, SIZE) for i in range(len(ds))])   # [N, 1, S, S]
    has = regions.any(axis=(-2, -1))
    assert has.sum() == 30 and (has[:, 0] == ds.labels[:, 0].astype(bool)).all()
    assert "own evidence regions" in record["pe_against"]
    for name in ("unbalanced", "moon"):
        cols = _columns(out, name)
        final = epilogue(cols["maps"].astype(np.float64), SIZE, np.float64)
        want = proportional_energy_full(final, regions)       # full resolution, per image
        np.testing.assert_allclose(cols["pe"][has], want[has], atol=2e-4)
        assert np.isnan(cols["pe"][~has]).all()               # no box: no PE
        fig = record["models"][name]["per_attribute"]["lesion"]
        pred = cols["logits"][:, 0] >= 0
        positive = ds.labels[:, 0] == 1
        assert fig["minority_error"] == pytest.approx((positive & ~pred).sum() / positive.sum())
        assert fig["majority_error"] == pytest.approx((~positive & pred).sum() / (~positive).sum())
        for group, sel in (("pos", pred), ("neg", ~pred)):
            chosen = sel & has[:, 0]
            assert fig[f"n_pe_{group}"] == chosen.sum()
            if chosen.any():
                assert fig[f"pe_{group}"] == pytest.approx(want[chosen, 0].mean(), abs=2e-4)
    table = (out / "tables" / "paper.md").read_text()
    assert "| lesion | + | 0.200 |" in table and "moon min. err" in table
    assert "own evidence regions" in (out / "report.md").read_text()


def test_fixed_label_masks_where_no_boxes_k2(tmp_path, task):
    """K = 2: "lesion" has boxes, "top" a fixed mask (label_masks/top.png); PE of "top" is
    against that mask for every image, of "lesion" against the boxes only."""
    rng = np.random.default_rng(0)
    rows = list(csv.reader((task / "labels.csv").read_text().splitlines()))
    assert rows[0] == ["path", "lesion", "split", "boxes:lesion"]
    table = [["path", "lesion", "top", "split", "boxes:lesion"]] + [
        [r[0], r[1], str(int(rng.random() < 0.3)), r[2], r[3]] for r in rows[1:]]
    folder = tmp_path / "k2"
    folder.mkdir()
    (folder / "images").symlink_to(task / "images")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table)
    (folder / "labels.csv").write_text(buf.getvalue())
    (folder / "label_masks").mkdir()
    top = np.zeros((16, 16), np.uint8)
    top[:5] = 255
    Image.fromarray(top).save(folder / "label_masks" / "top.png")
    ds = CsvDataset(folder)
    assert ds.attributes == ["lesion", "top"] and ds.labels[:, 0].sum() == 30
    torch.manual_seed(0)
    model = build_net("small", num_outputs=2, width=4).eval()
    card = card_for(model, ["lesion", "top"], SIZE, input_fit="stretch",
                    positive_counts=[30, 40], negative_counts=[120, 110])
    ckpt = save_checkpoint(model, card, tmp_path / "ckpt")
    out = tmp_path / "audit"
    record = analyze(AnalyzeOptions([f"m={ckpt}"], f"csv:{folder}", out, split="all",
                                    engine="ort", batch_size=50, shard_size=50, save_maps=True))
    cols = _columns(out, "m")
    final = epilogue(cols["maps"].astype(np.float64), SIZE, np.float64)
    fixed = np.asarray(Image.fromarray(top).resize((SIZE, SIZE), Image.NEAREST)) > 127
    np.testing.assert_allclose(cols["pe"][:, 1], proportional_energy_full(
        final[:, 1:], fixed[None])[:, 0], atol=2e-4)
    assert np.isnan(cols["pe"][ds.labels[:, 0] == 0, 0]).all()
    assert np.isfinite(cols["pe"][ds.labels[:, 0] == 1, 0]).all()
    assert set(record["models"]["m"]["per_attribute"]) == {"lesion", "top"}
    assert "else the label's fixed mask" in record["pe_against"]


def test_export_ort_cam_on_another_size_and_serving(tmp_path, task, trained):
    onnx_file = tmp_path / "moon.onnx"
    proc = _bincam("export", trained / "moon", "--out", onnx_file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from bincam.runtime import open_engine
    from bincam.serve.handler import Handler, Request

    wide = np.asarray(Image.open(task / "images" / "000003.png").convert("RGB").resize((70, 40)))
    Image.fromarray(wide).save(tmp_path / "wide.png")
    stretched = np.asarray(Image.fromarray(wide).resize((SIZE, SIZE), Image.BILINEAR))
    x = stretched.transpose(2, 0, 1)[None]
    with open_engine(onnx_file, "ort") as engine:
        assert engine.info.attributes == ["lesion"] and engine.info.input_fit == "stretch"
        want = engine.run_forward(x)[0]
        handler = Handler(engine)
        buf = io.BytesIO()
        Image.fromarray(wide).save(buf, format="PNG")
        got = handler.handle([Request({"pixels": wide[None]}, ["logits", "energy", "heatmaps"]),
                              Request({"encoded": np.array([buf.getvalue()], dtype=object)},
                                      ["logits"])])
    np.testing.assert_allclose(got[0]["logits"][0], want, atol=1e-5)
    np.testing.assert_allclose(got[1]["logits"][0], want, atol=1e-5)
    assert got[0]["heatmaps"].shape == (1, 1, SIZE, SIZE) and np.isnan(got[0]["energy"]).all()
    proc = _bincam("cam", onnx_file, tmp_path / "wide.png", "--out", tmp_path / "cam",
                   "--engine", "ort")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = json.loads((tmp_path / "cam" / "predictions.json").read_text())
    assert pred["attributes"] == ["lesion"]
    assert pred["images"][0]["logits"] == pytest.approx(want.tolist(), abs=1e-5)
    assert (tmp_path / "cam" / "overlays" / "wide" / "lesion.png").is_file()
