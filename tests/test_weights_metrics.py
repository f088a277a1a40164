"""Class-weight formulas and error rates on hand-made examples."""

import numpy as np
import pytest

from bincam.core.metrics import error_rates
from bincam.training.weights import class_weights


def test_balanced_weights_equalise_the_classes():
    pos, neg = np.array([10, 50, 90]), np.array([90, 50, 10])
    w_pos, w_neg = class_weights(pos, neg, "balanced")
    assert np.allclose(pos * w_pos, neg * w_neg)                 # equal contributions
    assert np.allclose((pos * w_pos + neg * w_neg) / (pos + neg), 1.0)  # mean weight 1
    assert np.allclose(w_pos, [5.0, 1.0, 100 / 180])


def test_moon_weights():
    w_pos, w_neg = class_weights(np.array([10, 90, 50]), np.array([90, 10, 50]), "moon")
    assert np.allclose(w_pos, [1.0, 10 / 90, 1.0]) and np.allclose(w_neg, [10 / 90, 1.0, 1.0])


def test_moon_and_balanced_differ_by_a_per_attribute_scale_only():
    """Same class ratio within an attribute; balanced = moon · N/(2·n_min); K = 1, a 10 %
    task: majority weight p_min/p_maj = 1/9, minority 1."""
    pos, neg = np.array([100, 700, 30, 1]), np.array([900, 300, 970, 999])
    mp, mn = class_weights(pos, neg, "moon")
    bp, bn = class_weights(pos, neg, "balanced")
    np.testing.assert_allclose(mn / mp, bn / bp)
    scale = (pos + neg) / (2 * np.minimum(pos, neg))
    np.testing.assert_allclose(bp, mp * scale) and np.testing.assert_allclose(bn, mn * scale)
    np.testing.assert_allclose((pos * mp + neg * mn) / (pos + neg),
                               2 * np.minimum(pos, neg) / (pos + neg))  # moon's mean weight
    w_pos, w_neg = class_weights(np.array([100]), np.array([900]), "moon")
    assert w_pos.tolist() == [1.0] and w_neg == pytest.approx([1 / 9])


def test_unbalanced_and_degenerate():
    w_pos, w_neg = class_weights(np.array([0, 3]), np.array([5, 3]), "balanced")
    assert w_pos[0] == w_neg[0] == 1.0
    assert np.all(class_weights(np.array([1, 2]), np.array([3, 4]), "none")[0] == 1)
    with pytest.raises(ValueError):
        class_weights(np.array([1]), np.array([1]), "inverse")


def test_error_rates_by_class():
    labels = np.array([[1, 1], [1, 0], [0, 0], [0, 0], [0, 1]])
    logits = np.array([[2.0, 0.0], [-1.0, 0.5], [-3.0, -1.0], [0.0, -2.0], [-1.0, -0.1]])
    rates = error_rates(logits, labels, majority_positive=[False, True])
    assert np.allclose(rates.fnr, [1 / 2, 1 / 2])   # z ≥ 0 is positive: attr 1 misses image 5
    assert np.allclose(rates.fpr, [1 / 3, 1 / 3])
    assert np.allclose(rates.minority_error, [1 / 2, 1 / 3])
    assert np.allclose(rates.majority_error, [1 / 3, 1 / 2])
    assert np.allclose(rates.error, [2 / 5, 2 / 5])
