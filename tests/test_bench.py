"""``bincam bench``: statistics on known samples, fidelity metrics on hand-made maps, inputs,
peak memory, the JSON record of a tiny end-to-end run, and its errors."""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bincam.attributes import ATTRIBUTES
from bincam.core.fidelity import compare, pearson, relative_error, top_region_iou
from bincam.data.batches import bench_images, to_batch
from bincam.bench.memory import PeakMemory
from bincam.bench.stats import bands_overlap, latency_stats, ratio_stats, unpaired_ratio_stats
from bincam.checkpoint import card_for, save_checkpoint
from bincam.errors import BincamError
from bincam.nets import build_net


def test_latency_percentiles_on_known_samples():
    s = latency_stats([10, 1, 9, 2, 8, 3, 7, 4, 6, 5], images_per_sample=4)  # 1..10, shuffled
    # linear interpolation at q/100·(n−1): p50 → 5.5, p90 → 9.1, p95 → 9.55, p99 → 9.91
    assert s["p50_s"] == pytest.approx(5.5) and s["p90_s"] == pytest.approx(9.1)
    assert s["p95_s"] == pytest.approx(9.55) and s["p99_s"] == pytest.approx(9.91)
    assert s["mean_s"] == pytest.approx(5.5) and s["std_s"] == pytest.approx(math.sqrt(55 / 6))
    assert (s["min_s"], s["max_s"], s["n"]) == (1, 10, 10)
    assert s["images_per_s"] == pytest.approx(4 / 5.5)
    assert latency_stats([0.25])["std_s"] == 0.0
    for bad in ([], [1.0, float("nan")], [-1.0]):
        with pytest.raises(ValueError):
            latency_stats(bad)


def test_paired_ratios_and_their_band():
    a, b = [2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 2.0, 2.0, 2.0, 2.0]  # ratios 2, 2, 3, 4, 5
    r = ratio_stats(a, b)
    assert (r["q25"], r["median"], r["q75"]) == (2.0, 3.0, 4.0)
    assert (r["low"], r["high"]) == (3.0, 3.0)  # one round: the band is the median itself
    # two rounds: ratios 2, 2 | 3, 4, 5 → round medians 2 and 4, pooled median 3
    r2 = ratio_stats([[2.0, 4.0], [6.0, 8.0, 10.0]], [[1.0, 2.0], [2.0, 2.0, 2.0]])
    assert r2["per_round"] == [2.0, 4.0] and (r2["low"], r2["median"], r2["high"]) == (2, 3, 4)
    assert bands_overlap(r2, {"low": 3.9, "high": 5.0}) and bands_overlap(r2, {"low": 1, "high": 2})
    assert not bands_overlap(r2, {"low": 4.1, "high": 5.0})
    with pytest.raises(ValueError):
        ratio_stats([1.0], [1.0, 2.0])
    # unpaired: medians divided, quartiles crosswise (a: 4, 4, 4; b: 1, 2, 2 → q25 1.5, q75 2)
    u = unpaired_ratio_stats([4.0, 4.0, 4.0], [1.0, 2.0, 2.0], scale=2)
    assert (u["q25"], u["median"]) == (4.0, 4.0) and u["q75"] == pytest.approx(16 / 3)
    # per round: 2·4/1 = 8 and 2·4/2 = 4; a round without samples on one side is left out
    u2 = unpaired_ratio_stats([[4.0], [4.0], []], [[1.0], [2.0], [2.0]], scale=2)
    assert u2["per_round"] == [8.0, 4.0] and (u2["low"], u2["high"]) == (4.0, 8.0)


def test_fidelity_metrics_on_hand_made_maps():
    cols = np.tile(np.arange(10.0), (10, 1))          # value = column index
    shifted = np.tile((np.arange(10.0) + 1) % 10, (10, 1))
    maps = np.stack([cols, shifted])[None]             # [1, 2, 10, 10]
    # top 20 %: ≥ the 80th percentile (7.2) → columns 8–9 of the first, 7–8 of the second
    assert top_region_iou(maps[:, :1], maps[:, 1:])[0, 0] == pytest.approx(1 / 3)
    assert top_region_iou(maps, maps).min() == 1.0
    assert pearson(maps, maps).min() == pytest.approx(1.0)
    assert pearson(maps, 9 - maps)[0, 0] == pytest.approx(-1.0)
    empty = np.zeros_like(maps)
    assert top_region_iou(empty, empty).min() == 1.0 and pearson(empty, empty).min() == 1.0
    assert top_region_iou(maps, empty).max() == 0.0 and pearson(maps, empty).max() == 0.0
    assert relative_error(2 * maps, maps)[0, 0] == pytest.approx(1.0)
    assert relative_error(empty, empty).max() == 0.0

    ref = {"logits": np.array([[1.0, -2.0]]), "raw": maps, "maps": maps / 9,
           "pe": np.array([[0.5, 0.25]])}
    ours = {"logits": np.array([[1.5, 0.5]]), "raw": maps * 1.1, "maps": maps / 9 + 0.01,
            "pe": np.array([[0.5, 0.35]])}
    out = compare(ours, ref, ["Male", "Smiling"])
    o = out["overall"]
    assert o["prediction flips"]["sum"] == 1 and o["logits abs diff"]["max"] == 2.5
    assert o["raw-map rel error"]["max"] == pytest.approx(0.1)
    assert o["final-map max abs diff"]["max"] == pytest.approx(0.01)
    assert o["PE abs diff"]["max"] == pytest.approx(0.1) and o["PE abs diff"]["mean"] == \
        pytest.approx(0.05)
    assert out["per_attribute"]["Male"]["prediction flips"]["sum"] == 0
    assert out["per_attribute"]["Smiling"]["logits abs diff"]["max"] == 2.5
    with pytest.raises(ValueError):
        compare({**ours, "pe": np.zeros((2, 2))}, ref, ["Male", "Smiling"])


def test_inputs_are_never_zero_and_folder_images_load(tmp_path):
    r = bench_images("random", 3, 32, seed=1)
    assert r.dtype == np.uint8 and r.shape == (3, 32, 32, 3) and r.min() >= 1
    faces = bench_images("synth", 2, 64)
    assert faces.shape == (2, 64, 64, 3) and faces.std() > 10
    assert np.array_equal(faces, bench_images("synth", 2, 64))  # seeded
    Image.fromarray(faces[0]).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got = bench_images(str(tmp_path), 3, 64)  # one image, cycled
    assert got.shape == (3, 64, 64, 3) and np.array_equal(got[0], got[2])
    x = to_batch(faces)
    assert x.dtype == np.float32 and x.shape == (2, 3, 64, 64) and 0 < x.max() <= 1
    with pytest.raises(BincamError, match="synth, random or an image folder"):
        bench_images(str(tmp_path / "nowhere"), 1, 64)


def test_peak_memory_scope():
    with PeakMemory() as big:
        block = np.ones(40_000_000)  # 320 MB
        block[::4096] = 2
    del block
    with PeakMemory() as small:
        np.ones(1000)
    assert big.rss_bytes > 300e6 and big.cuda_bytes is None
    if small.scoped:  # Linux: each scope has its own peak
        assert small.rss_bytes < big.rss_bytes - 200e6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_net("small", width=8).eval()
    return save_checkpoint(model, card_for(model, list(ATTRIBUTES), 64),
                           tmp_path_factory.mktemp("ckpt"))


def bench(*args):
    return subprocess.run([sys.executable, "-m", "bincam", "bench", *args], capture_output=True,
                          text=True, timeout=600)


def test_tiny_bench_run_writes_the_record(tmp_path, checkpoint):
    out = tmp_path / "r.json"
    proc = bench(str(checkpoint), "--batch", "1,2", "--iters", "6", "--rounds", "2", "--warmup",
                 "1", "--reference-images", "2", "--fidelity-images", "2", "--json", str(out),
                 "--markdown", str(tmp_path / "r.md"))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["schema"] == "bincam.bench/1" and r["machine"]["cores"] >= 1
    assert r["model"] == {"spec": str(checkpoint), "described": checkpoint.name, "image_size": 64,
                          "attributes": 40}
    assert set(r["timing"]) == {"1", "2"}
    for batch, t in r["timing"].items():
        assert [row["engine"] for row in t["rows"]] == ["torch", "ort"]
        for row in t["rows"]:
            assert row["batch"] == int(batch) and row["memory"]["peak_rss_bytes"] > 0
            for scope in ("forward", "cam", "end_to_end"):
                s = row["scopes"][scope]
                assert len(s["samples_s"]) == 6 and s["min_s"] <= s["p50_s"] <= s["max_s"]
                assert s["round_of_sample"] == [0, 0, 0, 1, 1, 1]
            r_cf = row["ratios"]["CAM / forward"]
            assert r_cf["q25"] <= r_cf["q75"] and len(r_cf["per_round"]) == 2
            assert r_cf["low"] <= r_cf["median"] <= r_cf["high"]
        assert set(t["cross"]) == {"torch / ort CAM", "torch / ort e2e"}
    assert set(r["baselines"]) == {"pytorch-grad-cam", "torch-cam"} and not r["baselines_skipped"]
    for name, baseline in r["baselines"].items():
        assert len(baseline["per_image"]["samples_s"]) == 2
        assert set(baseline["vs"]) == {f"{name} / {e} {s} batch {b}" for s in ("e2e", "CAM")
                                       for e in ("torch", "ort") for b in (1, 2)}
    fid = r["fidelity"]
    assert set(fid) == {"ort", "pytorch-grad-cam", "torch-cam"} and fid["ort"]["images"] == 2
    assert fid["ort"]["overall"]["prediction flips"]["sum"] == 0 and fid["torch-cam"]["images"] == 2
    assert fid["ort"]["overall"]["final-map max abs diff"]["max"] <= 1e-4
    assert fid["pytorch-grad-cam"]["overall"]["final-map max abs diff"]["max"] <= 1e-4
    assert fid["pytorch-grad-cam"]["overall"]["top-20% IoU"]["min"] >= 0.9
    # torch-cam: the same |z| Grad-CAM, but one min-max before the resize instead of two
    assert fid["torch-cam"]["overall"]["pearson"]["mean"] >= 0.99
    assert set(fid["ort"]["per_attribute"]) == set(ATTRIBUTES)
    assert "| ort | 2 |" in (tmp_path / "r.md").read_text()
    assert "CAM / forward" in proc.stderr  # the Rich tables
    from rich.console import Console

    from bincam.bench.report import rich_tables

    for width in (80, 100):  # the console tables fit the terminal, nothing cut to "…"
        console = Console(width=width, record=True, file=io.StringIO())
        for table in rich_tables(r):
            console.print(table)
        text = console.export_text()
        assert max(map(len, text.splitlines())) <= width and "…" not in text
        assert "pytorch-grad-cam" in text and "1−Pearson max" in text and "logits max" in text
        assert "[range over 2 rounds]" in text  # a title's brackets are not read as markup


def test_bench_errors(tmp_path, checkpoint):
    def user_error(proc, text):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert text in " ".join(proc.stderr.split()), proc.stderr

    out = tmp_path / "r.json"
    user_error(bench(str(checkpoint), "--engines", "trt", "--json", str(out)),
               "the TensorRT engine needs TensorRT")
    user_error(bench(str(checkpoint), "--engines", "tvm"),
               "--engines takes distinct names from torch, ort, trt, got tvm")
    user_error(bench(str(checkpoint), "--batch", "1,x"), "--batch takes comma-separated integers")
    user_error(bench(str(checkpoint), "--iters", "5", "--rounds", "2"), "--iters must be at least 3 per round (3 × --rounds 2 = 6), got 5")
    user_error(bench(str(tmp_path / "none.onnx")), "does not exist")
    user_error(bench(str(checkpoint), "--images", str(tmp_path / "nowhere")),
               "synth, random or an image folder")
    assert not out.exists() and not list(Path(tmp_path).glob(".*tmp"))
