"""Synthetic faces: prevalences, co-occurrence, determinism, layout, and cues inside their masks."""

import json

import numpy as np
import pytest

from bincam.attributes import ATTRIBUTES, TRAIN_POSITIVE_SHARE, mask_array
from bincam.data.celeba import CelebA
from bincam.data.frontal import frontal_mask
from bincam.data.synth import cue_masks, read_cues, synthesize
from bincam.data.synth_labels import HAIR_COLOURS, sample_labels
from bincam.data.synth_render import MEAN_LANDMARKS, render_face
from bincam.errors import BincamError

IDX = {a: i for i, a in enumerate(ATTRIBUTES)}


@pytest.fixture(scope="module")
def labels():
    return sample_labels(200_000, np.random.default_rng(11)).astype(bool)


def test_prevalence_matches_celeba_training_share(labels):
    share = labels.mean(0)
    p = np.array([TRAIN_POSITIVE_SHARE[a] for a in ATTRIBUTES])
    sigma = np.sqrt(p * (1 - p) / len(labels))
    assert np.all(np.abs(share - p) < 5 * sigma), dict(zip(ATTRIBUTES, share - p))


def test_obvious_co_occurrence(labels):
    male = labels[:, IDX["Male"]]
    for beardish in ("Mustache", "Goatee", "5_o_Clock_Shadow"):
        col = labels[:, IDX[beardish]]
        assert col[male].mean() > 5 * col[~male].mean() and col[~male].mean() < 0.01
    makeup, lipstick = labels[:, IDX["Heavy_Makeup"]], labels[:, IDX["Wearing_Lipstick"]]
    assert abs(lipstick[makeup].mean() - 0.95) < 0.01
    assert lipstick[male].mean() < 0.01
    hair = labels[:, [IDX[h] for h in HAIR_COLOURS]]
    assert hair.sum(1).max() == 1  # one hair colour at most


def test_same_seed_same_bytes(tmp_path):
    a = synthesize(tmp_path / "a", 12, seed=4, workers=1)
    b = synthesize(tmp_path / "b", 12, seed=4, workers=2)
    for name in ("list_attr_celeba.txt", "list_landmarks_align_celeba.txt", "cues.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for img in sorted((a / "img_align_celeba").iterdir()):
        assert img.read_bytes() == (b / "img_align_celeba" / img.name).read_bytes()
    c = synthesize(tmp_path / "c", 12, seed=5)
    assert (a / "list_attr_celeba.txt").read_bytes() != (c / "list_attr_celeba.txt").read_bytes()


def test_layout_and_refusal_to_overwrite(synth_root, tmp_path):
    folder = synth_root / "celeba"
    manifest = json.loads((folder / "bincam_synth.json").read_text())
    assert manifest["n"] == 60 and manifest["seed"] == 3
    for name in ("list_bbox_celeba.txt", "identity_CelebA.txt"):
        assert (folder / name).is_file()
    with pytest.raises(BincamError, match="already exists"):
        synthesize(synth_root, 5)
    assert not list(synth_root.glob(".celeba.*partial"))


def test_landmarks_at_affact_positions_and_some_not_frontal(synth_root):
    ds = CelebA(synth_root)
    mean = ds.landmarks.reshape(-1, 5, 2).mean(0)
    assert np.abs(mean - MEAN_LANDMARKS).max() < 3.0
    share = frontal_mask(ds.landmarks).mean()
    assert 0.5 < share < 0.97


def test_cues_lie_inside_their_mask_regions():
    rng = np.random.default_rng(21)
    labels = sample_labels(120, rng)
    inside = dict.fromkeys(ATTRIBUTES, 0)
    total = dict.fromkeys(ATTRIBUTES, 0)
    for i, lab in enumerate(labels):
        _, _, cues = render_face(lab, np.random.default_rng([21, i]))
        for attr, mask in zip(ATTRIBUTES, cue_masks(cues, list(ATTRIBUTES))):
            inside[attr] += int((mask & mask_array(attr)).sum())
            total[attr] += int(mask.sum())
    loose = {"Blurry": 0.6, "Double_Chin": 0.75, "No_Beard": 0.75}  # blur is global by nature
    loose.update(dict.fromkeys(("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Straight_Hair",
                                "Wavy_Hair"), 0.6))  # long hair falls below the face box
    for attr in ATTRIBUTES:
        assert total[attr] > 0, f"no cue drawn for {attr}"
        assert inside[attr] / total[attr] >= loose.get(attr, 0.85), attr


def test_cue_file_matches_labels(synth_root):
    ds = CelebA(synth_root)
    cues = read_cues(synth_root)
    for name, lab in zip(ds.files, ds.labels):
        present = {a for a, v in zip(ATTRIBUTES, lab) if v}
        for attr in ("Eyeglasses", "Wearing_Hat", "Mustache", "Smiling"):
            assert (attr in cues[name]) == (attr in present)
        assert ("No_Beard" in cues[name]) == ("No_Beard" not in present)  # the beard is the cue
    masks = cue_masks(cues[ds.files[0]], ["Eyeglasses", "Male"], size=112)
    assert masks.shape == (2, 112, 112)
