"""The frontal filter d/D ≤ 0.1 on hand-computed landmarks."""

import numpy as np

from bincam.data.frontal import frontal_mask, frontal_ratio


def lm(nose_x, nose_y=120.0):
    # eyes (90,100),(130,100); mouth corners (95,140),(125,140): p1=(110,100), p2=(110,140), D=40
    return [90, 100, 130, 100, nose_x, nose_y, 95, 140, 125, 140]


def test_ratio_on_a_vertical_axis():
    ratios = frontal_ratio(np.array([lm(110), lm(114), lm(115), lm(102)]))
    assert np.allclose(ratios, [0.0, 0.1, 0.125, 0.2])
    assert frontal_mask(np.array([lm(110), lm(114), lm(115), lm(102)])).tolist() == \
        [True, True, False, False]


def test_ratio_on_a_tilted_axis():
    # p1 = (100, 100), p2 = (120, 140): axis direction (1, 2)/√5, D = 40; nose at (120, 120)
    # distance of (120,120) from the line: |(20,40) × (20,20)| / |(20,40)| = |400 − 800| / √2000
    landmarks = np.array([[90, 100, 110, 100, 120, 120, 110, 140, 130, 140]])
    expected = 400 / np.sqrt(2000) / 40
    assert np.isclose(frontal_ratio(landmarks)[0], expected)
    assert not frontal_mask(landmarks)[0]


def test_degenerate_faces_are_not_frontal():
    flat = np.array([[90, 100, 130, 100, 110, 100, 95, 100, 125, 100]])  # D = 0
    assert not frontal_mask(flat)[0]
