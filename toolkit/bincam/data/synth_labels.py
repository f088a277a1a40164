"""Attribute labels for synthetic faces: CelebA's training prevalences, with obvious co-occurrence.

Every attribute keeps its CelebA training share ``p`` in expectation. Co-occurrence comes from a
*driver* (Male, female, old, Smiling, Heavy_Makeup): a share ``f`` of the positives falls on images
where the driver holds, so with driver prevalence ``q``

    P(a | driver) = f·p/q,   P(a | not driver) = (1 − f)·p/(1 − q),

which leaves the marginal ``P(a) = p`` exactly. Hair colour (Black/Blond/Brown/Gray/other) and hair
texture (Straight/Wavy/neither) are categorical, so those labels never contradict each other.
"""

from __future__ import annotations

import numpy as np

from bincam.attributes import ATTRIBUTES, TRAIN_POSITIVE_SHARE as P

# attribute -> (driver, share of its positives where the driver holds)
_DRIVEN: dict[str, tuple[str, float]] = {
    "5_o_Clock_Shadow": ("Male", 0.98), "Bald": ("Male", 0.97), "Goatee": ("Male", 0.98),
    "Mustache": ("Male", 0.98), "Sideburns": ("Male", 0.98), "Receding_Hairline": ("Male", 0.8),
    "Wearing_Necktie": ("Male", 0.95), "Big_Nose": ("Male", 0.75), "Bushy_Eyebrows": ("Male", 0.7),
    "Double_Chin": ("Male", 0.7), "Chubby": ("Male", 0.65),
    "Heavy_Makeup": ("female", 0.99), "Wearing_Earrings": ("female", 0.95),
    "Wearing_Necklace": ("female", 0.93), "Arched_Eyebrows": ("female", 0.9),
    "Attractive": ("female", 0.7), "Bangs": ("female", 0.8), "Rosy_Cheeks": ("female", 0.9),
    "Pale_Skin": ("female", 0.7), "Oval_Face": ("female", 0.65), "Big_Lips": ("female", 0.7),
    "Pointy_Nose": ("female", 0.7), "Bags_Under_Eyes": ("old", 0.5),
    "High_Cheekbones": ("Smiling", 0.85), "Mouth_Slightly_Open": ("Smiling", 0.65),
}
_BEARD_FROM_MALE = 0.98     # share of No_Beard negatives (bearded faces) that are male
_LIPSTICK_IF_MAKEUP = 0.95  # P(Wearing_Lipstick | Heavy_Makeup); otherwise only on women
_INDEPENDENT = ("Male", "Young", "Smiling", "Blurry", "Eyeglasses", "Narrow_Eyes", "Wearing_Hat")
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
HAIR_TEXTURES = ("Straight_Hair", "Wavy_Hair")


def _driven(rng: np.random.Generator, p: float, driver: np.ndarray, share: float) -> np.ndarray:
    q = driver.mean() if driver.size else 0.5
    q = min(max(q, 1e-6), 1 - 1e-6)
    p_if, p_else = min(share * p / q, 1.0), min((1 - share) * p / (1 - q), 1.0)
    return rng.random(driver.shape) < np.where(driver, p_if, p_else)


def _categorical(rng: np.random.Generator, n: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    u = rng.random(n)
    out, lo = {}, 0.0
    for name in names:
        out[name] = (u >= lo) & (u < lo + P[name])
        lo += P[name]
    return out


def sample_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [n, 40]`` labels in CelebA column order (1 = attribute present)."""
    lab: dict[str, np.ndarray] = {a: rng.random(n) < P[a] for a in _INDEPENDENT}
    drivers = {"Male": lab["Male"], "female": ~lab["Male"], "old": ~lab["Young"],
               "Smiling": lab["Smiling"]}
    lab.update(_categorical(rng, n, HAIR_COLOURS))
    lab.update(_categorical(rng, n, HAIR_TEXTURES))
    for name, (driver, share) in _DRIVEN.items():
        lab[name] = _driven(rng, P[name], drivers[driver], share)
    lab["No_Beard"] = ~_driven(rng, 1 - P["No_Beard"], lab["Male"], _BEARD_FROM_MALE)
    makeup, female = lab["Heavy_Makeup"], ~lab["Male"]
    rest = (P["Wearing_Lipstick"] - _LIPSTICK_IF_MAKEUP * makeup.mean()) / max(
        (female & ~makeup).mean(), 1e-6)
    p_lip = np.where(makeup, _LIPSTICK_IF_MAKEUP, np.where(female, np.clip(rest, 0, 1), 0.0))
    lab["Wearing_Lipstick"] = rng.random(n) < p_lip
    missing = set(ATTRIBUTES) - set(lab)
    assert not missing, f"no label rule for {missing}"
    return np.stack([lab[a] for a in ATTRIBUTES], axis=1).astype(np.uint8)
