"""``bincam analyze``: exact per-image figures, aggregates, report files, resume, torchrun, errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bincam.analysis.aggregate import per_attribute
from bincam.analysis.compute import BatchAnalyzer, CueProjector, average_maps
from bincam.attributes import ATTRIBUTES
from bincam.checkpoint import card_for, save_checkpoint
from bincam.data.synth import cue_masks, read_cues
from bincam.runtime import explain
from bincam.core.energy import proportional_energy_full
from bincam.core.epilogue import epilogue
from bincam.core.metrics import error_rates
from bincam.nets import build_net

SIZE = 64


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two random small nets with training counts (the second one 'balanced')."""
    out = {}
    pos = [int(1000 * p) for p in (0.1 + 0.8 * np.random.default_rng(0).random(40))]
    for seed, name in ((0, "unbalanced"), (1, "balanced")):
        torch.manual_seed(seed)
        model = build_net("small", width=8).eval()
        card = card_for(model, list(ATTRIBUTES), SIZE, positive_counts=pos,
                        negative_counts=[1000 - p for p in pos],
                        training={"config": {"weighting": "none" if seed == 0 else "balanced"}})
        out[name] = save_checkpoint(model, card, tmp_path_factory.mktemp(name))
    return out


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "bincam", "analyze", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def models_args(checkpoints):
    return ["--model", f"unbalanced={checkpoints['unbalanced']}",
            "--model", f"balanced={checkpoints['balanced']}"]


def raw_batch(rng, b=6, k=5, h=4, w=4):
    raw = rng.normal(size=(b, k, h, w))
    raw[0, 0] = -1.0                 # empty map
    raw[1, 1] = 0.3                  # flat map: empty after min-max
    raw[2, 2, :2] = -5.0             # partly negative
    return raw


def test_average_maps_are_exact(rng=np.random.default_rng(1)):
    names = list(ATTRIBUTES[:5])
    raw = raw_batch(rng)
    logits = rng.normal(size=raw.shape[:2]).astype(np.float32)
    an = BatchAnalyzer(names, "gradcam", SIZE, True, True)
    energy = an.energy(raw.shape[-2:])
    x, low, high = energy.normalised(raw)
    sums = an._sums(x, low, high, logits >= 0, np.zeros((len(raw), 3, SIZE, SIZE)))
    got = average_maps(sums, energy)
    final = epilogue(raw, SIZE, np.float64)
    for c in (0, 1):
        for k in range(len(names)):
            sel = (logits[:, k] >= 0) == bool(c)
            if sel.any():
                np.testing.assert_allclose(got[c, k], final[sel, k].mean(0), atol=1e-12)
            else:
                assert np.isnan(got[c, k]).all()


def test_cue_pe_matches_full_resolution(synth_root, rng=np.random.default_rng(2)):
    cues = read_cues(synth_root)
    names = list(ATTRIBUTES)
    images = sorted(cues)[:4]
    raw = rng.normal(size=(len(images), len(names), 2, 2))
    an = BatchAnalyzer(names, "gradcam", SIZE, True, True)
    project = CueProjector(names, SIZE, an.energy((2, 2)))
    inside, area = (np.stack(v) for v in zip(*(project(cues[i]) for i in images)))
    x, low, _ = an.energy((2, 2)).normalised(raw)
    has = area > 0
    assert has.sum() >= 10 and not has.all()
    got = an.energy((2, 2)).energy(x[has], low[has], inside[has], area[has])
    masks = np.stack([cue_masks(cues[i], names, SIZE) for i in images])
    final = epilogue(raw, SIZE, np.float64)
    want = proportional_energy_full(final, masks)[has]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_evidence_and_bias_split_the_logit(checkpoints):
    """``z = e + b_eff`` with ``b_eff`` the affine head's bias, for every image."""
    from bincam.analysis.models import ModelSource, open_model
    from bincam.cam.gradients import effective_head

    model = open_model(ModelSource.parse(f"u={checkpoints['unbalanced']}"), "torch")
    x = np.random.default_rng(3).random((5, 3, SIZE, SIZE)).astype(np.float32)
    out = model.run(x)
    an = BatchAnalyzer(model.attributes, "gradcam", SIZE, model.factored, model.mask_positive)
    cols, _ = an(out, np.arange(5), np.zeros((5, 40)), np.zeros((5, 3, SIZE, SIZE)))
    _, b_eff, _ = effective_head(model.engine.model, model.layer)
    np.testing.assert_allclose(cols["logits"] - cols["evidence"], np.broadcast_to(
        b_eff.numpy(), (5, 40)), atol=2e-5)


def test_figures_scale_to_the_data():
    from io import BytesIO

    from PIL import Image

    from bincam.analysis.plots import _error_limit, average_cam_grid, error_bars

    def record(errors):
        return {"models": {"m": {"per_attribute": {
            a: {"minority_error": e, "majority_error": e and e / 2} for a, e in errors.items()}}}}

    small, full = record({"A": 0.1, "B": 0.2}), record({"A": 1.0, "B": None})
    assert _error_limit(small, ["A", "B"]) == 0.25 and _error_limit(full, ["A", "B"]) == 1.0
    assert error_bars(small, ["A", "B"]) != error_bars(full, ["A", "B"])
    rng = np.random.default_rng(0)

    def grid(k):
        return Image.open(BytesIO(average_cam_grid(
            rng.random((2, k, 16, 16)), np.full((2, k), 3), [f"Long_Attribute_Name_{i}"
                                                             for i in range(k)],
            np.ones((k, 16, 16), bool), np.full((3, 16, 16), 128.0), "t"))).size

    one, ten = grid(1), grid(10)
    assert one[0] < ten[0] / 2 and ten[1] > one[1]  # one pair of tiles, not a row of five


def test_aggregates_by_predicted_and_majority_class():
    z = np.array([[1.0, -1.0], [-2.0, 0.5], [0.0, -0.1], [-0.3, 2.0]], np.float32)
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], np.uint8)
    cols = {"logits": z, "labels": labels, "pe": np.array([[.1, .2], [.3, .4], [.5, .6], [.7, .8]]),
            "empty": np.array([[0, 1], [0, 0], [1, 0], [0, 0]], bool),
            "evidence": z - np.array([0.5, -0.5], np.float32), "pe_cue": np.full((4, 2), np.nan)}
    fig = per_attribute(cols, np.array([False, True]))
    rates = error_rates(z, labels, [False, True])
    np.testing.assert_array_equal(fig["minority_error"], rates.minority_error)
    # attribute 0: predicted positive = images 0, 2 (z = 0 counts as positive); minority = pos
    assert fig["pe_pos"][0] == pytest.approx(0.3) and fig["pe_minority"][0] == pytest.approx(0.3)
    assert fig["pe_neg"][0] == pytest.approx(0.5) and fig["empty_pos"][0] == pytest.approx(0.5)
    # attribute 1: majority is positive; majority-predicted = images 1, 3
    assert fig["pe_majority"][1] == pytest.approx(0.6) and fig["n_majority"][1] == 2
    # predicted negative for attribute 1: images 0 (e = −0.5) and 2 (e = +0.4: the bias decides)
    assert fig["bias_decides_neg"][1] == pytest.approx(0.5)
    assert fig["bias_spread"][0] == pytest.approx(0, abs=1e-6)
    assert np.isnan(fig["pe_cue_pos"]).all()


def test_analyze_matches_explain_and_writes_the_report(tmp_path, synth_root, checkpoints):
    from bincam.analysis import AnalyzeOptions, analyze

    out = tmp_path / "run"
    record = analyze(AnalyzeOptions([f"unbalanced={checkpoints['unbalanced']}",
                                     f"balanced={checkpoints['balanced']}"],
                                    f"synth:{synth_root}", out, split="all", limit=40,
                                    engine="torch", batch_size=8, shard_size=16))
    assert record["images"] == 40 and record["reference_model"] == "unbalanced"
    res = columns(out, "unbalanced")
    assert json.loads((out / "results" / "unbalanced" / "attributes.json").read_text()) == list(
        ATTRIBUTES)
    from bincam.checkpoint import load_checkpoint
    from bincam.data.celeba import CelebA

    ds = CelebA(synth_root, "all", image_size=SIZE)
    images = np.stack([ds.load_image(i) for i in range(40)]).transpose(0, 3, 1, 2)
    want = explain(load_checkpoint(checkpoints["unbalanced"]), images)
    np.testing.assert_allclose(res["logits"], want.logits, atol=1e-6)
    np.testing.assert_allclose(res["pe"], want.proportional_energy(), atol=1e-6)
    np.testing.assert_array_equal(res["labels"], ds.labels[:40])
    assert np.isfinite(res["pe_cue"]).sum() > 100            # synthetic: cue PE present
    card = load_checkpoint(checkpoints["unbalanced"]).card
    rates = error_rates(res["logits"], res["labels"], card.majority_is_positive())
    agg = json.loads((out / "aggregates.json").read_text())["models"]["unbalanced"]
    assert agg["means"]["minority_error"] == pytest.approx(rates.means()["minority_error"])
    for f in ("report.md", "report.html", "tables/paper.md", "tables/paper.tex",
              "tables/paper_per_attribute.csv", "tables/headline.md", "tables/headline.csv"):
        assert (out / f).stat().st_size > 200, f
    for f in ("errors", "pe_by_class", "average_cams_unbalanced", "average_cams_balanced"):
        assert (out / "plots" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Means over attributes" in report and "plots/errors.png" in report
    assert "<table>" in (out / "report.html").read_text()
    assert "\\textbf{" in (out / "tables/paper.tex").read_text()

    # the ONNX Runtime engine gives the same figures (a checkpoint is exported on the fly)
    ort_out = tmp_path / "ort"
    analyze(AnalyzeOptions([f"unbalanced={checkpoints['unbalanced']}"], f"synth:{synth_root}",
                           ort_out, split="all", limit=40, engine="ort", batch_size=8,
                           shard_size=16))
    ort = columns(ort_out, "unbalanced")
    np.testing.assert_allclose(ort["logits"], res["logits"], atol=1e-4)
    assert np.median(np.abs(ort["pe"] - res["pe"])) < 1e-5
    # the wall time covers the whole command, the checkpoint's export to ONNX included
    timing = json.loads((ort_out / "timing.json").read_text())
    model = timing["models"]["unbalanced"]
    assert model["open_seconds_this_run"] > 0 and model["images_this_run"] == 40
    assert timing["wall_seconds"] >= model["open_seconds_this_run"] + model[
        "compute_seconds_all_shards"]
    text = (ort_out / "report.md").read_text()
    assert "domain.md" not in text and "Biased Binary Attribute Classifiers" in text
    assert f"Wall time of this command {timing['wall_seconds']:.0f} s" in text
    # a resume with nothing left to compute says where the results come from
    analyze(AnalyzeOptions([f"unbalanced={checkpoints['unbalanced']}"], f"synth:{synth_root}",
                           ort_out, split="all", limit=40, engine="ort", batch_size=8,
                           shard_size=16), started=time.perf_counter() - 5)
    again = json.loads((ort_out / "timing.json").read_text())
    assert again["wall_seconds"] >= 5 and again["models"]["unbalanced"]["images_this_run"] == 0
    text = (ort_out / "report.md").read_text()
    assert "computed nothing" in text and "come from earlier runs" in text
    assert f"shards record {model['compute_seconds_all_shards']:.0f} s of computing" in text


def columns(out, name):
    return {p.stem: np.load(p) for p in (out / "results" / name).glob("*.npy")}


def _outputs(out):
    return {"aggregates": (out / "aggregates.json").read_bytes(),
            **{p.name: columns(out, p.name) for p in sorted((out / "results").iterdir())}}


def _same(a, b):
    assert a["aggregates"] == b["aggregates"]
    for name in a:
        if name != "aggregates":
            assert a[name].keys() == b[name].keys()
            for k in a[name]:
                np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{name}:{k}")


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path, synth_root, checkpoints):
    args = [*models_args(checkpoints), "--data", f"synth:{synth_root}", "--split", "all",
            "--engine", "torch", "--batch-size", "4", "--shard-size", "4", "--threads", "1"]
    whole = cli(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bincam", "analyze", *map(str, args), "--out",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "shards").glob("*/*.npz")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "shards").glob("*/*.npz")))
    assert 0 < done < 30 and not (out / "aggregates.json").exists()   # 2 models × 15 shards
    resumed = cli(*args, "--out", out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same(_outputs(tmp_path / "whole"), _outputs(out))
    timing = json.loads((out / "timing.json").read_text())["models"]
    assert sum(m["images_this_run"] for m in timing.values()) == 120 - 4 * done


@pytest.mark.slow
def test_two_torchrun_processes_match_one(tmp_path, synth_root, checkpoints):
    args = [*models_args(checkpoints), "--data", f"synth:{synth_root}", "--split", "all",
            "--engine", "ort", "--batch-size", "8", "--shard-size", "8", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = cli(*args, "--out", tmp_path / "one", env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "bincam", "analyze", *map(str, args),
                          "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    _same(_outputs(tmp_path / "one"), _outputs(tmp_path / "two"))


def test_bad_inputs_are_refused_without_damage(tmp_path, synth_root, checkpoints):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    base = ["--data", f"synth:{data}", "--split", "all", "--limit", "8", "--engine", "torch",
            "--batch-size", "8", "--shard-size", "8"]
    model = ["--model", f"unbalanced={checkpoints['unbalanced']}"]

    r = cli(*model, *base, "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr[-2000:]
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    r = cli(*model, *base, "--method", "hirescam", "--out", tmp_path / "a")
    assert r.returncode == 2 and "different command line" in r.stderr and "--method" in r.stderr
    assert "Traceback" not in r.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before
    r = cli(*model, *base, "--method", "hirescam", "--out", tmp_path / "a", "--restart")
    assert r.returncode == 0 and json.loads((tmp_path / "a" / "run.json").read_text())[
        "identity"]["method"] == "hirescam"

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = cli(*model, *base, "--out", tmp_path / "other")
    assert r.returncode == 2 and "not a bincam analysis folder" in r.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"

    (data / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    r = cli(*model, *base, "--out", tmp_path / "b")
    assert r.returncode == 2 and "missing" in r.stderr and "000003.jpg" in r.stderr
    assert not (tmp_path / "b").exists()

    r = cli("--model", "x=nowhere", *base, "--out", tmp_path / "c")
    assert r.returncode == 2 and "neither a checkpoint" in r.stderr
    r = cli(*model, *base, "--engine", "onnx", "--out", tmp_path / "c")
    assert r.returncode == 2 and "--engine must be one of" in r.stderr
    assert not (tmp_path / "c").exists()


def test_model_attributes_must_exist_in_the_dataset(tmp_path, synth_root):
    from bincam.analysis import AnalyzeOptions, analyze
    from bincam.errors import BincamError

    torch.manual_seed(0)
    model = build_net("small", width=8, num_outputs=2).eval()
    ckpt = save_checkpoint(model, card_for(model, ["Male", "Not_An_Attribute"], SIZE),
                           tmp_path / "m")
    with pytest.raises(BincamError, match="Not_An_Attribute.*lacks"):
        analyze(AnalyzeOptions([f"m={ckpt}"], f"synth:{synth_root}", tmp_path / "out",
                               split="all", engine="torch"))
    assert not (tmp_path / "out").exists()


TORCH_FREE = """
import sys
from pathlib import Path
from bincam.analysis import AnalyzeOptions, analyze
record = analyze(AnalyzeOptions([f"m={sys.argv[1]}"], f"synth:{sys.argv[2]}", Path(sys.argv[3]),
                                split="all", limit=16, engine="ort", batch_size=8, shard_size=8))
assert "torch" not in sys.modules, "torch was imported"
print("ok", record["images"])
"""


def test_ort_audit_of_an_onnx_file_needs_no_torch(tmp_path, synth_root, checkpoints):
    from bincam.checkpoint import load_checkpoint
    from bincam.export.model import export_checkpoint, save_onnx

    onnx_path = save_onnx(export_checkpoint(load_checkpoint(checkpoints["unbalanced"])),
                          tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(onnx_path), str(synth_root),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok 16")
    assert (tmp_path / "out" / "report.md").is_file()


def test_each_torchrun_process_sees_its_own_gpu(monkeypatch):
    from bincam.analysis.runner import World, pin_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("LOCAL_RANK", "1")
    pin_gpu(World(1, 2), "cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"          # CPU runs are left alone
    pin_gpu(World(1, 2), "cuda")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("LOCAL_RANK", "3")
    pin_gpu(World(3, 4), "cuda")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_frontal_filter_and_limit_select_the_audited_images(synth_root):
    from bincam.analysis.runner import AnalyzeOptions, open_dataset
    from bincam.data.celeba import CelebA
    from bincam.data.frontal import frontal_mask

    every = CelebA(synth_root, "all")
    ds = open_dataset(AnalyzeOptions([], f"synth:{synth_root}", None, split="all", frontal=True))
    assert ds.files == [f for f, keep in zip(every.files, frontal_mask(every.landmarks)) if keep]
    ds = open_dataset(AnalyzeOptions([], f"synth:{synth_root}", None, split="all", limit=7))
    assert ds.files == every.files[:7]
