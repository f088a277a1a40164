"""The generic CSV dataset: labels (0/1, −1/1, K = 1), splits, fit rules, evidence regions (boxes in
cells and regions.json, mask images, fixed label masks) against independent computations, and
one clear error naming file, row and column for every kind of bad CSV."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bincam.data.csvset import CsvDataset, split_of_path
from bincam.data.fit import (fit_image, fit_mask, fit_transform, load_fitted,
                             rasterize_boxes)
from bincam.data.spec import open_split
from bincam.errors import BincamError


def _image(folder: Path, name: str, w: int, h: int, value: int = 100) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(folder / name)


def _dataset(tmp_path: Path, text: str, sizes: dict[str, tuple[int, int]], **files) -> Path:
    for name, (w, h) in sizes.items():
        _image(tmp_path, name, w, h)
    for name, content in files.items():
        (tmp_path / name.replace("__", ".")).write_text(content)
    (tmp_path / "labels.csv").write_text(text)
    return tmp_path


def brute_force_cover(box, w, h, size, fit):
    """Frame pixels overlapping the box with positive area, pixel by pixel (test-only)."""
    t = fit_transform(w, h, size, fit)
    x0, y0, x1, y1 = (box[0] + t.tx) * t.sx, (box[1] + t.ty) * t.sy, \
        (box[2] + t.tx) * t.sx, (box[3] + t.ty) * t.sy
    out = np.zeros((size, size), bool)
    for r in range(size):
        for c in range(size):
            dx = min(c + 1, x1) - max(c, x0)
            dy = min(r + 1, y1) - max(r, y0)
            out[r, c] = dx > 1e-9 and dy > 1e-9
    return out


# ------------------------------------------------------------------------------ reading

def test_labels_splits_and_k1(tmp_path):
    sizes = {f"im/{i}.png": (20, 30) for i in range(6)}
    root = _dataset(tmp_path, "path,lesion,split\n" + "".join(
        f"im/{i}.png,{v},{s}\n" for i, (v, s) in enumerate(
            zip([1, 0, 0, 1, 0, 0], ["train", "train", "val", "valid", "test", "2"]))), sizes)
    ds = CsvDataset(root)
    assert ds.attributes == ["lesion"] and ds.labels.shape == (6, 1)
    assert ds.labels[:, 0].tolist() == [1, 0, 0, 1, 0, 0]
    assert ds.splits.tolist() == [0, 0, 1, 1, 2, 2] and ds.fit == "stretch"
    train = open_split(f"csv:{root / 'labels.csv'}", "train", 32)
    assert train.files == ["im/0.png", "im/1.png"] and train.positive_counts().tolist() == [1]
    assert open_split(f"csv:{root}", "valid", 32, limit=1).files == ["im/2.png"]
    assert train.load_image(0).shape == (32, 32, 3)


def test_minus_one_convention_subset_and_hash_split(tmp_path):
    sizes = {f"{i}.png": (8, 8) for i in range(40)}
    rows = "".join(f"{i}.png,{1 if i % 3 == 0 else -1},{i % 2}\n" for i in range(40))
    root = _dataset(tmp_path, "path,a,b\n" + rows, sizes)
    ds = CsvDataset(root, attributes=["b", "a"])
    assert ds.attributes == ["b", "a"]
    assert ds.labels[:, 1].tolist() == [int(i % 3 == 0) for i in range(40)]
    assert ds.labels[:, 0].tolist() == [i % 2 for i in range(40)]
    assert ds.splits.tolist() == [split_of_path(f"{i}.png") for i in range(40)]
    assert set(ds.splits.tolist()) == {0, 1, 2}  # 40 paths hash into all three splits


# ------------------------------------------------------------------------------ fit rules

@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("w,h,size", [(50, 30, 16), (30, 50, 64), (37, 91, 20), (40, 40, 40)])
def test_boxes_rasterize_like_pixel_masks_and_brute_force(fit, w, h, size):
    rng = np.random.default_rng(w * h + size)
    t = fit_transform(w, h, size, fit)
    boxes = [(0, 0, w, h), (w - 1, h - 1, w, h), (0, 0, 1, 1), (3, 3, 3, 9), (2, 5, 2, 5)]
    boxes += [tuple(sorted(rng.integers(0, w + 1, 2))[i // 2] if i % 2 == 0 else
                    sorted(rng.integers(0, h + 1, 2))[i // 2] for i in range(4))
              for _ in range(25)]
    for x0, y0, x1, y1 in boxes:
        pixels = np.zeros((h, w), bool)
        pixels[y0:y1, x0:x1] = True
        got = rasterize_boxes(t.boxes([[x0, y0, x1, y1]]), size)
        np.testing.assert_array_equal(got, fit_mask(pixels, size, fit))
        np.testing.assert_array_equal(got, brute_force_cover((x0, y0, x1, y1), w, h, size, fit))
        if x0 == x1 or y0 == y1:
            assert not got.any()  # an empty box covers nothing


def test_fractional_boxes_match_brute_force():
    rng = np.random.default_rng(7)
    for fit in ("stretch", "crop", "pad"):
        for _ in range(40):
            box = np.sort(rng.uniform(0, 33, 2)).tolist(), np.sort(rng.uniform(0, 21, 2)).tolist()
            b = (box[0][0], box[1][0], box[0][1], box[1][1])
            got = rasterize_boxes(fit_transform(33, 21, 17, fit).boxes([b]), 17)
            np.testing.assert_array_equal(got, brute_force_cover(b, 33, 21, 17, fit))


def test_fit_rules_move_the_content_where_the_boxes_go():
    """A bright block drawn in a 60×40 image lands where its box says, for every rule."""
    img = np.zeros((40, 60), np.uint8)
    img[10:20, 30:45] = 255
    for fit in ("stretch", "crop", "pad"):
        out = np.asarray(fit_image(Image.fromarray(img), 30, fit)) > 127
        cover = rasterize_boxes(fit_transform(60, 40, 30, fit).boxes([[30, 10, 45, 20]]), 30)
        assert out.any() and (out & ~cover).sum() == 0, fit   # nothing bright outside its box
    pad = np.asarray(fit_image(Image.fromarray(np.full((40, 60), 200, np.uint8)), 30, "pad"))
    assert pad[:4].max() == 0 and pad[-4:].max() == 0 and pad[12:18].min() == 200  # black bands
    crop = fit_transform(60, 40, 30, "crop")
    assert crop.source == (10, 0, 50, 40) and crop.sx == crop.sy == 30 / 40


def test_load_fitted_grey_and_celeba_rule(tmp_path):
    _image(tmp_path, "g.png", 50, 20, 77)
    out = load_fitted(tmp_path / "g.png", 16, "pad")
    assert out.shape == (16, 16, 3) and (out[8] == 77).all() and (out[0] == 0).all()
    with pytest.raises(BincamError, match="neither CelebA-aligned"):
        load_fitted(tmp_path / "g.png", 16, "celeba")


# ------------------------------------------------------------------------------ regions

def test_regions_from_cells_json_and_mask_images(tmp_path):
    sizes = {"a.png": (40, 20), "b.png": (40, 20), "c.png": (40, 20)}
    mask = np.zeros((20, 40), np.uint8)
    mask[15:20, 30:40] = 255                   # on the bottom-right image edge
    Image.fromarray(mask).save(tmp_path / "ma.png")
    regions = {"b.png": {"lesion": [[0, 0, 40, 20]], "other": [[1, 1, 1, 5]]}}
    root = _dataset(tmp_path, "path,lesion,other,boxes:lesion,mask:lesion\n"
                    'a.png,1,0,"0,0,10,10; 38,18,40,20",ma.png\n'
                    "b.png,0,1,,\n"
                    "c.png,0,0,,\n", sizes, regions__json=json.dumps(regions))
    ds = CsvDataset(root)
    assert ds.has_regions and ds.fit == "stretch"
    r = ds.regions(0, 16)
    t = fit_transform(40, 20, 16, "stretch")
    want = rasterize_boxes(t.boxes([[0, 0, 10, 10], [38, 18, 40, 20]]), 16) | \
        fit_mask(mask > 127, 16, "stretch")
    np.testing.assert_array_equal(r[0], want)
    assert r[0, -1, -1] and not r[1].any()     # the edge pixel; no region for "other"
    assert ds.regions(1, 16)[0].all()          # the whole image, from regions.json
    assert not ds.regions(1, 16)[1].any()      # an empty box: no region
    assert not ds.regions(2, 16).any()
    subset = CsvDataset(root, attributes=["other"], split="all", limit=2)
    assert subset.regions(1, 16).shape == (1, 16, 16) and subset.boxes(1, "lesion").shape == (1, 4)


def test_crop_drops_boxes_outside_the_square(tmp_path):
    root = _dataset(tmp_path, 'path,x,boxes:x\na.png,1,"0,0,5,5"\n', {"a.png": (60, 20)},
                    dataset__json='{"fit": "crop"}')
    ds = CsvDataset(root)
    assert ds.fit == "crop" and not ds.regions(0, 10).any()  # the left 20 columns are cut off


def test_fixed_label_masks(tmp_path):
    root = _dataset(tmp_path, "path,a,b\nx.png,1,0\n", {"x.png": (9, 9)})
    (root / "label_masks").mkdir()
    m = np.zeros((8, 8), np.uint8)
    m[:4] = 255
    Image.fromarray(m).save(root / "label_masks" / "b.png")
    masks, known = CsvDataset(root).fixed_masks(16)
    assert known.tolist() == [False, True]
    assert masks[1, :8].all() and not masks[1, 8:].any() and not masks[0].any()


# ------------------------------------------------------------------------------ bad CSVs

BAD = [
    ("path,lesion\nmissing.png,1\n", "row 2, column 'path': image 'missing.png' does not exist"),
    ("image,lesion\na.png,1\n", "row 1, column 'path': missing column"),
    ("path,lesion\na.png,2\n", "row 2, column 'lesion': label '2' is not binary"),
    ("path,lesion\na.png,1\nb.png,yes\n", "row 3, column 'lesion': label 'yes' is not binary"),
    ("path,lesion\na.png,\n", "row 2, column 'lesion': label '' is not binary"),
    ("path,lesion\na.png,0\nb.png,-1\n", "row 3, column 'lesion': negative label '-1', but row 2"),
    ('path,lesion,boxes:lesion\na.png,1,"1,2,3"\n',
     "row 2, column 'boxes:lesion': malformed box '1,2,3'"),
    ('path,lesion,boxes:lesion\na.png,1,"1,2,x,4"\n',
     "row 2, column 'boxes:lesion': malformed box '1,2,x,4'"),
    ('path,lesion,boxes:lesion\na.png,1,"5,2,3,4"\n',
     "row 2, column 'boxes:lesion': box 1: box (5, 2, 3, 4) needs x0 ≤ x1"),
    ('path,lesion,boxes:lesion\na.png,1,"0,0,8,8;-1,0,2,2"\n',
     "row 2, column 'boxes:lesion': box 2:"),
    ('path,lesion,boxes:lesion\na.png,1,"0,0,10,4"\nb.png,0,\n',
     "row 2, column 'boxes:lesion': box (0, 0, 10, 4) reaches outside the image"),
    ('path,lesion,boxes:lesion\na.png,1,"0,0,4,nan"\n', "row 2, column 'boxes:lesion': box 1:"),
    ("path,lesion,split\na.png,1,dev\n", "row 2, column 'split': split 'dev' is not train"),
    ("path,lesion\na.png,1,0\n", "row 2: 3 cells for 2 columns"),
    ("path,lesion\na.png,1\na.png,0\n", "row 3, column 'path': image 'a.png' is listed again"),
    ("path,lesion,boxes:tumour\na.png,1,\n", "row 1, column 'boxes:tumour': names no label"),
    ("path,le/sion\na.png,1\n", "row 1, column 'le/sion': a label name may hold only"),
    ("path,lesion,lesion\na.png,1,1\n", "row 1, column 'lesion': the column name repeats"),
    ("path,split\na.png,train\n", "row 1: no label column"),
    ("path,lesion\n../a.png,1\n", "row 2, column 'path': '../a.png' must be a path inside"),
    ("", "row 1: empty file"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_csv_names_row_and_column(tmp_path, text, message):
    root = _dataset(tmp_path, text, {"a.png": (8, 6), "b.png": (8, 6)})
    with pytest.raises(BincamError) as err:
        CsvDataset(root)
    assert str(err.value).startswith(str(root / "labels.csv")) and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("regions,message", [
    ({"z.png": {"lesion": [[0, 0, 1, 1]]}}, "image 'z.png' is not a row"),
    ({"a.png": {"tumour": [[0, 0, 1, 1]]}}, "image 'a.png', label 'tumour': no such label"),
    ({"a.png": {"lesion": [[0, 0, 1]]}}, "image 'a.png', label 'lesion', box 1: a box has 4"),
    ({"a.png": {"lesion": [[0, 0, 9, 1]]}}, "label 'lesion': box (0, 0, 9, 1) reaches outside"),
    ({"a.png": {"lesion": [[0, "0", 1, 1]]}}, "image 'a.png', label 'lesion', box 1"),
])
def test_bad_regions_json_names_image_and_label(tmp_path, regions, message):
    root = _dataset(tmp_path, "path,lesion\na.png,1\n", {"a.png": (8, 6)},
                    regions__json=json.dumps(regions))
    with pytest.raises(BincamError, match="regions.json") as err:
        CsvDataset(root)
    assert message in str(err.value), str(err.value)


def test_bad_mask_image_and_manifest(tmp_path):
    _image(tmp_path, "m.png", 5, 5)
    root = _dataset(tmp_path, "path,x,mask:x\na.png,1,m.png\n", {"a.png": (8, 6)})
    with pytest.raises(BincamError, match=r"row 2, column 'mask:x': mask image is 5×5, the "
                                          r"image 8×6"):
        CsvDataset(root)
    (root / "labels.csv").write_text("path,x,mask:x\na.png,1,none.png\n")
    with pytest.raises(BincamError, match="row 2, column 'mask:x': mask image 'none.png' does"):
        CsvDataset(root)
    (root / "labels.csv").write_text("path,x\na.png,1\n")
    (root / "dataset.json").write_text('{"fit": "squash"}')
    with pytest.raises(BincamError, match="dataset.json: fit: Input should be 'stretch'"):
        CsvDataset(root)


def test_cli_prints_one_line_for_a_bad_csv(tmp_path):
    root = _dataset(tmp_path, 'path,lesion,boxes:lesion\na.png,1,"0,0,9,3"\n', {"a.png": (8, 6)})
    proc = subprocess.run([sys.executable, "-m", "bincam", "train", "--data", f"csv:{root}",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300)
    error = " ".join(proc.stderr.split("error:", 1)[-1].split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("error:") == 1 and error.startswith(f"{root / 'labels.csv'}: row 2, "
                                                                  "column 'boxes:lesion'")
    assert "reaches outside the image" in error
    assert not (tmp_path / "run").exists()


def test_unknown_label_and_frontal_are_refused(tmp_path):
    root = _dataset(tmp_path, "path,x\na.png,1\n", {"a.png": (8, 6)})
    with pytest.raises(BincamError, match="unknown label.*has: x"):
        CsvDataset(root, attributes=["y"])
    with pytest.raises(BincamError, match="--frontal"):
        open_split(f"csv:{root}", "all", 16, frontal=True)
    with pytest.raises(BincamError, match="label file .* does not exist"):
        open_split(f"csv:{root / 'nope.csv'}", "all", 16)
    assert math.isclose(fit_transform(8, 6, 16, "stretch").sy, 16 / 6)
