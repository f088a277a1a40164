"""From per-image columns to the paper's per-attribute figures (NumPy only).

Per attribute, with predictions ``z ≥ 0`` and the majority class taken from the *training* counts:
FNR, FPR, minority- and majority-class error; mean and std of PE over the images predicted
positive / negative and predicted minority / majority; the share of empty maps; for affine heads
the evidence share ``|e| / (|e| + |b|)`` of ``z = e + b`` and how often the bias decides
(``sign(e) ≠ sign(z)``: the image evidence alone points to the other class, or nowhere); on
synthetic data PE against the exact cue masks. Everything is computed from the columns in image
order, so any split into shards or processes gives the same bits.
"""

from __future__ import annotations

import numpy as np

from bincam.metrics import error_rates

CLASS_GROUPS = ("pos", "neg", "minority", "majority")


def _mean_std(values: np.ndarray, select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise mean and std of ``values`` where ``select`` (NaN where nothing is selected)."""
    v = np.where(select, values.astype(np.float64), np.nan)
    n = select.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(v, 0) / np.maximum(n, 1), np.nan)
        var = np.where(n > 0, np.nansum((v - mean) ** 2, 0) / np.maximum(n, 1), np.nan)
    return mean, np.sqrt(var)


def _fraction(flags: np.ndarray, select: np.ndarray) -> np.ndarray:
    n = select.sum(0)
    return np.where(n > 0, (flags & select).sum(0) / np.maximum(n, 1), np.nan)


def per_attribute(cols: dict[str, np.ndarray], majority_positive: np.ndarray) -> dict[str, np.ndarray]:
    """Figures ``[K]`` per attribute from merged columns (``logits``, ``labels``, ``pe``, …)."""
    z, labels = cols["logits"], cols["labels"]
    maj = np.asarray(majority_positive, dtype=bool)
    pred = z >= 0
    groups = {"pos": pred, "neg": ~pred, "majority": pred == maj[None], "minority": pred != maj[None]}
    rates = error_rates(z, labels, maj)
    out = {"fnr": rates.fnr, "fpr": rates.fpr, "minority_error": rates.minority_error,
           "majority_error": rates.majority_error, "error": rates.error}
    evidence = cols["evidence"].astype(np.float64)
    bias = z.astype(np.float64) - evidence
    share = np.abs(evidence) / (np.abs(evidence) + np.abs(bias) + 1e-30)
    bias_decides = np.sign(evidence) != np.sign(np.where(pred, 1.0, -1.0))
    cue = np.isfinite(cols["pe_cue"])
    for g, sel in groups.items():
        out[f"n_{g}"] = sel.sum(0)
        out[f"pe_{g}"], out[f"pe_std_{g}"] = _mean_std(cols["pe"], sel)
        out[f"empty_{g}"] = _fraction(cols["empty"], sel)
        out[f"evidence_share_{g}"], _ = _mean_std(share, sel & np.isfinite(share))
        out[f"bias_decides_{g}"] = np.where(np.isfinite(evidence).all(0),
                                            _fraction(bias_decides, sel), np.nan)
        out[f"pe_cue_{g}"], _ = _mean_std(cols["pe_cue"], sel & cue)
        out[f"pe_box_on_cue_{g}"], _ = _mean_std(cols["pe"], sel & cue)
    out["n_cue"] = cue.sum(0)
    out["bias_spread"] = np.nanstd(bias, 0) if np.isfinite(bias).any() else np.full(z.shape[1],
                                                                                     np.nan)
    out["bias"] = np.nanmedian(bias, 0) if np.isfinite(bias).any() else np.full(z.shape[1],
                                                                                np.nan)
    return out


def summarise(figures: dict[str, np.ndarray], attributes: list[str],
              positive_share: np.ndarray, majority_positive: np.ndarray) -> dict:
    """JSON-ready record: per attribute, and means over attributes (ignoring NaN)."""
    def clean(v):
        v = float(v)
        return v if np.isfinite(v) else None

    per = {a: {k: clean(v[i]) for k, v in figures.items()} | {
        "train_positive_share": float(positive_share[i]),
        "majority_positive": bool(majority_positive[i])} for i, a in enumerate(attributes)}
    means = {}
    for k, v in figures.items():
        if k.startswith("n_"):
            continue
        finite = np.isfinite(v)
        means[k] = float(np.mean(v[finite])) if finite.any() else None
    return {"attributes": list(attributes), "per_attribute": per, "means": means}
