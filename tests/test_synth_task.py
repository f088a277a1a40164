"""The synthetic one-logit lesion task: exact prevalence per split, boxes that hold every lesion
pixel, the confound tag only on lesion images at the asked share, same bytes for a seed, and the
folder read back by the CSV reader."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from bincam.data.csvset import CsvDataset
from bincam.data.regions import read_regions_file
from bincam.data.synth_task import _texture, render_task_image, synthesize_task, task_labels
from bincam.errors import BincamError


def test_prevalence_and_confound_shares_are_exact():
    splits, lesion, marker = task_labels(1000, 0.1, 0.8, np.random.default_rng(0))
    for s, count in enumerate((800, 100, 100)):
        assert (splits == s).sum() == count and lesion[splits == s].sum() == count // 10
    assert not (marker & ~lesion).any()                      # never a tag without a lesion
    assert marker.sum() == sum(round(0.8 * lesion[splits == s].sum()) for s in range(3))
    assert task_labels(50, 0.1, 0.0, np.random.default_rng(1))[2].sum() == 0


@pytest.mark.parametrize("size", [32, 64, 97])
def test_boxes_hold_every_lesion_pixel_and_the_tag_is_apart(size):
    for i in range(20):
        img, lbox, mbox = render_task_image(np.random.default_rng([4, i]), size, True, True)
        background = _texture(np.random.default_rng([4, i]), size)  # drawn first: same texture
        lesion = np.abs(np.asarray(img, np.float64) - np.clip(np.rint(background), 0, 255)) > 0
        x0, y0, x1, y1 = map(int, mbox)
        lesion[y0:y1, x0:x1] = False                            # the tag is drawn over
        ys, xs = np.nonzero(lesion)
        assert len(ys) > 0
        assert xs.min() >= lbox[0] and xs.max() < lbox[2] and ys.min() >= lbox[1] and \
            ys.max() < lbox[3]
        assert 0 <= lbox[0] < lbox[2] <= size and 0 <= lbox[1] < lbox[3] <= size
        assert mbox[3] <= lbox[1] or mbox[2] <= lbox[0] or lbox[2] <= mbox[0]  # disjoint
        assert np.asarray(img)[y0:y1, x0:x1].max() == 240       # the tag itself


def test_folder_reads_back_and_is_deterministic(tmp_path):
    a = synthesize_task(tmp_path / "a", 60, seed=3, size=32, prevalence=0.2, confound=1.0)
    b = synthesize_task(tmp_path / "b", 60, seed=3, size=32, prevalence=0.2, confound=1.0)
    for name in ("labels.csv", "markers.json", "images/000007.png"):
        assert hashlib.sha256((a / name).read_bytes()).digest() == \
            hashlib.sha256((b / name).read_bytes()).digest()
    ds = CsvDataset(a)
    assert ds.attributes == ["lesion"] and ds.fit == "stretch" and ds.has_regions
    assert ds.labels.sum() == 12 and [int((ds.splits == s).sum()) for s in range(3)] == [48, 6, 6]
    markers = read_regions_file(a / "markers.json")
    for i, f in enumerate(ds.files):
        has_box = len(ds.boxes(i, "lesion")) == 1
        assert has_box == bool(ds.labels[i, 0]) == ds.regions(i, 32)[0].any()
        assert len(markers[f]["marker"]) == ds.labels[i, 0]      # confound 1: every lesion
    manifest = json.loads((a / "bincam_synth_task.json").read_text())
    assert manifest["lesions"] == 12 and manifest["markers"] == 12
    with pytest.raises(BincamError, match="already exists"):
        synthesize_task(a, 60)


def test_cli_writes_the_task_and_refuses_bad_options(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "bincam", "data", "synth-task", *a],
                                    capture_output=True, text=True, timeout=120)
    proc = run("--out", str(tmp_path / "t"), "--n", "20", "--size", "32")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t" / "labels.csv").read_text().startswith("path,lesion,split,boxes:lesion")
    for args, text in ((["--prevalence", "0"], "--prevalence must lie strictly between"),
                       (["--confound", "1.5"], "--confound must lie in [0, 1]"),
                       (["--n", "3"], "--n must be at least 10")):
        proc = run("--out", str(tmp_path / "u"), *args)
        assert proc.returncode == 2 and text in " ".join(proc.stderr.split()), proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "u").exists()
