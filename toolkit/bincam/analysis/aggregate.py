"""From per-image columns to the paper's per-attribute figures (NumPy only), shard by shard.

Per attribute, with predictions ``z ≥ 0`` and the majority class taken from the *training* counts:
FNR, FPR, minority- and majority-class error; mean and std of PE over the images predicted
positive / negative and predicted minority / majority; the share of empty maps; for affine heads
the evidence share ``|e| / (|e| + |b|)`` of ``z = e + b`` and how often the bias decides
(``sign(e) ≠ sign(z)``: the image evidence alone points to the other class, or nowhere); on
synthetic data PE against the exact cue masks.

Each shard is reduced to sums (``shard_sums``), the sums are added in shard order (``add_sums``) and
turned into figures at the end (``figures``): memory does not grow with the dataset, and any split
of the shards over processes or runs gives the same bits.
"""

from __future__ import annotations

import numpy as np

GROUPS = ("pos", "neg", "minority", "majority")
MEANS = ("pe", "evidence_share", "pe_cue", "pe_box_on_cue")
FRACTIONS = ("empty", "bias_decides")


def shard_sums(cols: dict[str, np.ndarray], majority_positive: np.ndarray) -> dict[str, np.ndarray]:
    """Counts and sums ``[K]`` (float64 or int64) of one shard's columns."""
    z, labels = cols["logits"].astype(np.float64), cols["labels"].astype(bool)
    pred = z >= 0
    maj = np.asarray(majority_positive, dtype=bool)[None]
    evidence = cols["evidence"].astype(np.float64)
    bias = z - evidence
    with np.errstate(invalid="ignore"):
        share = np.abs(evidence) / (np.abs(evidence) + np.abs(bias) + 1e-30)
    cue = np.isfinite(cols["pe_cue"])
    has_pe = np.isfinite(cols["pe"])  # NaN: no evidence region for that image and attribute
    values = {"pe": (cols["pe"], has_pe), "evidence_share": (share, np.isfinite(share)),
              "pe_cue": (cols["pe_cue"], cue), "pe_box_on_cue": (cols["pe"], cue & has_pe)}
    flags = {"empty": cols["empty"].astype(bool),
             "bias_decides": np.sign(evidence) != np.where(pred, 1.0, -1.0)}
    out = {"shards": np.ones(z.shape[1], np.int64),
           "n": np.full(z.shape[1], len(z), np.int64), "positives": labels.sum(0),
           "false_negatives": (labels & ~pred).sum(0), "false_positives": (~labels & pred).sum(0),
           "affine": np.isfinite(evidence).all(0).astype(np.int64),
           "bias_sum": np.nansum(bias, 0), "bias_sq": np.nansum(bias ** 2, 0)}
    for g, sel in {"pos": pred, "neg": ~pred, "majority": pred == maj,
                   "minority": pred != maj}.items():
        out[f"n_{g}"] = sel.sum(0)
        for name, (v, ok) in values.items():
            s = sel if ok is None else sel & ok
            v = np.where(s, v.astype(np.float64), 0.0)
            out[f"{name}_{g}_n"], out[f"{name}_{g}_sum"] = s.sum(0), v.sum(0)
            out[f"{name}_{g}_sq"] = (v ** 2).sum(0)
        for name, f in flags.items():
            out[f"{name}_{g}_count"] = (f & sel).sum(0)
    return out


def add_sums(total: dict | None, part: dict) -> dict:
    if total is None:
        return {k: v.copy() for k, v in part.items()}
    for k, v in part.items():
        total[k] += v
    return total


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def figures(sums: dict, majority_positive: np.ndarray) -> dict[str, np.ndarray]:
    """Per-attribute figures ``[K]`` from the summed counts (NaN where a group is empty)."""
    maj = np.asarray(majority_positive, dtype=bool)
    n, pos = sums["n"], sums["positives"]
    fnr = _ratio(sums["false_negatives"], pos)
    fpr = _ratio(sums["false_positives"], n - pos)
    out = {"fnr": fnr, "fpr": fpr, "minority_error": np.where(maj, fpr, fnr),
           "majority_error": np.where(maj, fnr, fpr),
           "error": _ratio(sums["false_negatives"] + sums["false_positives"], n)}
    for g in GROUPS:
        out[f"n_{g}"] = sums[f"n_{g}"].astype(np.float64)
        for name in MEANS:
            cnt = sums[f"{name}_{g}_n"]
            mean = _ratio(sums[f"{name}_{g}_sum"], cnt)
            out[f"{name}_{g}"] = mean
            if name == "pe":
                var = _ratio(sums[f"{name}_{g}_sq"], cnt) - mean ** 2
                out[f"pe_std_{g}"] = np.sqrt(np.maximum(var, 0))
                out[f"n_pe_{g}"] = cnt.astype(np.float64)  # images with a region
        for name in FRACTIONS:
            out[f"{name}_{g}"] = _ratio(sums[f"{name}_{g}_count"], sums[f"n_{g}"])
    no_head = sums["affine"] < sums["shards"]
    for g in GROUPS:
        out[f"bias_decides_{g}"] = np.where(no_head, np.nan, out[f"bias_decides_{g}"])
    out["n_cue"] = (sums["pe_cue_pos_n"] + sums["pe_cue_neg_n"]).astype(np.float64)
    bias = _ratio(sums["bias_sum"], n)
    out["bias"] = np.where(no_head, np.nan, bias)
    out["bias_spread"] = np.where(no_head, np.nan, np.sqrt(np.maximum(
        _ratio(sums["bias_sq"], n) - bias ** 2, 0)))
    return out


def per_attribute(cols: dict[str, np.ndarray], majority_positive: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """Figures of one set of columns (all images at once)."""
    return figures(shard_sums(cols, majority_positive), majority_positive)


def summarise(figs: dict[str, np.ndarray], attributes: list[str],
              positive_share: np.ndarray, majority_positive: np.ndarray) -> dict:
    """JSON-ready record: per attribute, and means over attributes (ignoring NaN)."""
    def clean(v):
        v = float(v)
        return v if np.isfinite(v) else None

    per = {a: {k: clean(v[i]) for k, v in figs.items()} | {
        "train_positive_share": float(positive_share[i]),
        "majority_positive": bool(majority_positive[i])} for i, a in enumerate(attributes)}
    means = {}
    for k, v in figs.items():
        if k.startswith("n_"):
            continue
        finite = np.isfinite(v)
        means[k] = float(np.mean(v[finite])) if finite.any() else None
    return {"attributes": list(attributes), "per_attribute": per, "means": means}
