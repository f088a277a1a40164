"""Unbalanced vs MOON on the synthetic one-logit lesion task, without and with the confound tag.

For each confound level (share of lesion images that also carry the corner tag; 0 = none) the
script writes the task (``bincam data synth-task``), trains an unbalanced (``--weighting none``)
and a MOON-weighted classifier on it, and audits both in one ``bincam analyze`` run on the test
split (PE of the predicted class's map in each image's own lesion box). From the saved raw maps
it adds what the audit table cannot know: PE inside the tag's box (``markers.json``), and lesion
PE of true positives with and without a tag. The models trained with the confound are also
audited on the test split of the confound-free task (tags gone), to show what they relied on.

    python benchmarks/synth_task_audit.py --work runs/synth_task_audit \\
        --out benchmarks/results/synth_task_audit
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from bincam.analysis import AnalyzeOptions, analyze
from bincam.core.energy import proportional_energy_full
from bincam.core.epilogue import epilogue
from bincam.data.csvset import CsvDataset
from bincam.data.fit import fit_transform, rasterize_boxes
from bincam.data.regions import read_regions_file
from bincam.data.synth_task import MARKERS_FILE, synthesize_task
from bincam.files import write_report
from bincam.machine import machine_info, machine_line
from bincam.training import TrainConfig, train

WEIGHTINGS = ("none", "moon")


def _marker_masks(ds: CsvDataset, folder: Path, size: int) -> np.ndarray:
    """``bool [N, S, S]``: each test image's tag box in the model frame (all False: no tag)."""
    markers = read_regions_file(folder / MARKERS_FILE)
    out = np.zeros((len(ds), size, size), bool)
    for i, f in enumerate(ds.files):
        boxes = markers.get(f, {}).get("marker")
        if boxes is not None and len(boxes):
            w, h = ds.source_size(i)
            out[i] = rasterize_boxes(fit_transform(w, h, size, ds.fit).boxes(boxes), size)
    return out


def _extra(audit: Path, name: str, ds: CsvDataset, folder: Path, size: int) -> dict:
    """Tag PE and lesion PE split by tag, from the audit's saved raw maps."""
    cols = {p.stem: np.load(p) for p in (audit / "results" / name).glob("*.npy")}
    final = epilogue(cols["maps"].astype(np.float64), size, np.float32)[:, 0]
    marker = _marker_masks(ds, folder, size)
    has_tag = marker.any(axis=(1, 2))
    lesion = ds.labels[:, 0] == 1
    pred = cols["logits"][:, 0] >= 0
    pe_tag = proportional_energy_full(final[:, None], marker[:, None])[:, 0]
    pe = cols["pe"][:, 0].astype(np.float64)

    def mean(values, sel):
        return float(values[sel].mean()) if sel.any() else None

    return {"images": int(len(ds)), "lesions": int(lesion.sum()), "tags": int(has_tag.sum()),
            "tp": int((lesion & pred).sum()), "fn": int((lesion & ~pred).sum()),
            "fp": int((~lesion & pred).sum()),
            "pe_tag_tp_with_tag": mean(pe_tag, lesion & pred & has_tag),
            "pe_lesion_tp_with_tag": mean(pe, lesion & pred & has_tag),
            "pe_lesion_tp_without_tag": mean(pe, lesion & pred & ~has_tag),
            "fnr_with_tag": mean(~pred, lesion & has_tag),
            "fnr_without_tag": mean(~pred, lesion & ~has_tag)}


def _summary(record: dict, name: str) -> dict:
    fig = record["models"][name]["per_attribute"]["lesion"]
    keys = ("minority_error", "majority_error", "pe_pos", "pe_neg", "n_pos", "n_neg",
            "n_pe_pos", "n_pe_neg", "empty_pos", "empty_neg", "bias_decides_pos")
    return {k: fig.get(k) for k in keys}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="datasets, checkpoints and audits")
    ap.add_argument("--out", required=True, help="results path prefix (.md and .json)")
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--prevalence", type=float, default=0.1)
    ap.add_argument("--confounds", default="0,0.9")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    confounds = [float(c) for c in args.confounds.split(",")]
    runs, timings = {}, {}
    for c in confounds:
        tag = f"confound{c:g}"
        data = work / f"task_{tag}"
        if not (data / "labels.csv").is_file():
            synthesize_task(data, args.n, seed=args.seed, size=args.size,
                            prevalence=args.prevalence, confound=c)
        models = {}
        for w in WEIGHTINGS:
            ckpt = work / f"{tag}_{w}"
            if not (ckpt / "card.json").is_file():
                shutil.rmtree(ckpt, ignore_errors=True)
                t0 = time.perf_counter()
                train(TrainConfig(data=f"csv:{data}", out=str(ckpt), width=args.width,
                                  epochs=args.epochs, image_size=args.size, weighting=w,
                                  seed=args.seed, threads=args.threads))
                timings[f"train {tag} {w}"] = time.perf_counter() - t0
            models["unbalanced" if w == "none" else "moon"] = ckpt
        runs[tag] = (data, models)
    results = {}
    clean = runs.get("confound0", (None,))[0]
    audits = [(tag, data, models, data) for tag, (data, models) in runs.items()]
    if clean is not None:
        audits += [(f"{tag} on confound0", data, models, clean)
                   for tag, (data, models) in runs.items() if tag != "confound0"]
    for label, _, models, test_data in audits:
        audit = work / f"audit_{label.replace(' ', '_')}"
        t0 = time.perf_counter()
        record = analyze(AnalyzeOptions([f"{n}={p}" for n, p in models.items()],
                                        f"csv:{test_data}", audit, split="test", engine="ort",
                                        save_maps=True, restart=True))
        timings[f"analyze {label}"] = time.perf_counter() - t0
        ds = CsvDataset(test_data, split="test")
        results[label] = {n: {"audit": _summary(record, n),
                              "from_maps": _extra(audit, n, ds, test_data, args.size)}
                          for n in models}
        results[label]["report"] = str(audit / "report.md")
    record = {"benchmark": "synth_task_audit", "machine": machine_info(), "args": vars(args),
              "results": results, "seconds": timings}
    write_report(Path(args.out), markdown(record), record)
    print(markdown(record))


def _f(v, digits=3):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(record: dict) -> str:
    a = record["args"]
    lines = [f"# Unbalanced vs MOON on the synthetic lesion task ({a['n']} images at "
             f"{a['size']} px, {a['prevalence']:.0%} lesions)", "",
             f"Machine: {machine_line(record['machine'])}. Small net (width {a['width']}), "
             f"{a['epochs']} epochs, seed {a['seed']}; audits on the test split "
             "(`benchmarks/synth_task_audit.py`). PE: proportional energy of the predicted "
             "class's Grad-CAM inside the image's own lesion box (images with a lesion); tag PE: "
             "inside the confound tag's box.", "",
             "| trained with / audited on | model | minority err (FNR) | majority err (FPR) | "
             "PE pred. + | PE pred. − | n pred. + with box | tag PE, TP with tag | "
             "lesion PE, TP with tag | lesion PE, TP without tag | FNR with tag | "
             "FNR without tag |", "|---|---|" + "---:|" * 10]
    for label, models in record["results"].items():
        for name, r in models.items():
            if name == "report":
                continue
            s, m = r["audit"], r["from_maps"]
            lines.append(f"| {label} | {name} | {_f(s['minority_error'])} | "
                         f"{_f(s['majority_error'])} | {_f(s['pe_pos'])} | {_f(s['pe_neg'])} | "
                         f"{int(s['n_pe_pos'] or 0)} | {_f(m['pe_tag_tp_with_tag'])} | "
                         f"{_f(m['pe_lesion_tp_with_tag'])} | {_f(m['pe_lesion_tp_without_tag'])}"
                         f" | {_f(m['fnr_with_tag'])} | {_f(m['fnr_without_tag'])} |")
    lines += ["", "Test split sizes: " + "; ".join(
        f"{label}: {next(iter(v.values()))['from_maps']['images']} images, "
        f"{next(iter(v.values()))['from_maps']['lesions']} lesions, "
        f"{next(iter(v.values()))['from_maps']['tags']} tags"
        for label, v in record["results"].items()), "",
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in record["seconds"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
