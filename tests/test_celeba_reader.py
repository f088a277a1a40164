"""The CelebA reader on a generated dataset, on CelebA-sized images and on malformed files."""

import shutil

import numpy as np
import pytest
from PIL import Image

from bincam.attributes import ATTRIBUTES
from bincam.data.celeba import CelebA, load_aligned
from bincam.data.listfiles import read_table
from bincam.errors import BincamError


def copy_dataset(src, dst):
    shutil.copytree(src / "celeba", dst / "celeba")
    return dst / "celeba"


def test_reads_generated_dataset(synth_root):
    ds = CelebA(synth_root)
    assert len(ds) == 60 and ds.attributes == list(ATTRIBUTES)
    assert ds.labels.shape == (60, 40) and set(np.unique(ds.labels)) <= {0, 1}
    assert ds.landmarks.shape == (60, 10)
    raw = read_table(synth_root / "celeba" / "list_attr_celeba.txt", counted=True, header=True)
    assert np.array_equal(ds.labels, (raw.values > 0).astype(np.uint8))
    sizes = {s: len(CelebA(synth_root, split=s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 48, "valid": 6, "test": 6}
    img = CelebA(synth_root / "celeba", split="test", image_size=96).load_image(0)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8


def test_subset_and_frontal(synth_root):
    ds = CelebA(synth_root, attributes=["Male", "Smiling"])
    full = CelebA(synth_root)
    assert np.array_equal(ds.labels, full.labels[:, [20, 31]])
    frontal = CelebA(synth_root, frontal=True)
    assert 0 < len(frontal) < len(full)
    with pytest.raises(BincamError, match="unknown attribute"):
        CelebA(synth_root, attributes=["Smiley"])
    with pytest.raises(BincamError, match="unknown split"):
        CelebA(synth_root, split="val")


def test_celeba_sized_images_get_the_affact_crop(tmp_path):
    img = np.zeros((218, 178, 3), dtype=np.uint8)
    img[20, 10] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = load_aligned(tmp_path / "a.png", 224)
    assert out.shape == (224, 224, 3)
    assert tuple(out[10, 34]) == (255, 0, 0)  # (x, y) = (10, 20) + (24, −10)
    assert out.sum() == 255


def test_malformed_list_line_names_file_and_line(tmp_path, synth_root):
    folder = copy_dataset(synth_root, tmp_path)
    path = folder / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # drop one value of the third image
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BincamError, match=r"list_attr_celeba.txt:5: expected an image name and 40"):
        CelebA(tmp_path)


def test_bad_value_and_count(tmp_path, synth_root):
    folder = copy_dataset(synth_root, tmp_path)
    path = folder / "list_attr_celeba.txt"
    text = path.read_text()
    path.write_text("61" + text[2:])
    with pytest.raises(BincamError, match="says 61 images, the file lists 60"):
        CelebA(tmp_path)
    lines = text.splitlines()
    lines[2] = lines[2].replace(" 1", " 7", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BincamError, match=r":3: attribute values must be 1 or -1, got 7"):
        CelebA(tmp_path)


def test_missing_files(tmp_path, synth_root):
    with pytest.raises(BincamError, match="does not exist"):
        CelebA(tmp_path / "nowhere")
    with pytest.raises(BincamError, match="no list_attr_celeba.txt.*img_align_celeba"):
        CelebA(tmp_path)
    folder = copy_dataset(synth_root, tmp_path)
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(BincamError, match="missing list file .*list_eval_partition.txt"):
        CelebA(tmp_path)


def test_undecodable_and_missing_image(tmp_path, synth_root):
    folder = copy_dataset(synth_root, tmp_path)
    ds = CelebA(tmp_path)
    (folder / "img_align_celeba" / ds.files[0]).write_bytes(b"not a jpeg")
    with pytest.raises(BincamError, match=f"{ds.files[0]} does not decode"):
        ds.load_image(0)
    (folder / "img_align_celeba" / ds.files[1]).unlink()
    with pytest.raises(BincamError, match=f"{ds.files[1]} is listed but missing"):
        ds.load_image(1)


def test_pre_aligned_folder_with_images_beside_the_lists(tmp_path, synth_root):
    folder = copy_dataset(synth_root, tmp_path)
    flat = tmp_path / "aligned"
    flat.mkdir()
    for item in folder.iterdir():
        if item.is_file():
            shutil.copy(item, flat / item.name)
    for img in (folder / "img_align_celeba").iterdir():
        shutil.copy(img, flat / img.name)
    ds = CelebA(flat, split="valid", image_size=224)
    assert len(ds) == 6 and ds.image_dir == flat
    assert np.array_equal(ds.load_image(0), CelebA(synth_root, split="valid").load_image(0))
