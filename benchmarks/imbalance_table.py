"""Per-attribute error rates by class of trained models on a test split (the paper's first table).

For each model: FNR, FPR, minority- and majority-class error per attribute (majority from the
model card's training counts) and their means over attributes. Writes JSON and a Markdown table.

    python benchmarks/imbalance_table.py --model unbalanced=models/synth-small-unbalanced \
        --model balanced=models/synth-small-balanced --data synth:data/synth20k --split test \
        --out benchmarks/results/imbalance_synth_small
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bincam.checkpoint import load_checkpoint
from bincam.machine import machine_info, machine_line
from bincam.core.metrics import error_rates
from bincam.training.data import load_images, open_split
from bincam.training.loop import predict_logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    results, cards = {}, {}
    for name, path in models.items():
        model = load_checkpoint(path)
        card = model.card
        ds = open_split(args.data, args.split, card.image_size, card.attributes)
        logits = predict_logits(model, load_images(ds))
        rates = error_rates(logits.numpy(), ds.labels, card.majority_is_positive())
        pos = np.array(card.positive_counts, dtype=float)
        share = pos / (pos + np.array(card.negative_counts))
        results[name] = {"means": rates.means(), "per_attribute": rates.per_attribute(
            card.attributes), "train_positive_share": dict(zip(card.attributes, share.tolist())),
            "images": len(ds), "checkpoint": str(path)}
        cards[name] = card
    record = {"benchmark": "imbalance_table", "data": args.data, "split": args.split,
              "machine": machine_info(), "models": results,
              "training_configs": {n: c.training.get("config") for n, c in cards.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))


def markdown(record: dict) -> str:
    names = list(record["models"])
    first = record["models"][names[0]]
    attrs = sorted(first["per_attribute"], key=lambda a: min(first["train_positive_share"][a],
                                                             1 - first["train_positive_share"][a]))
    lines = [f"# Error rates by class on {record['data']} ({record['split']} split, "
             f"{first['images']} images)", "",
             f"Machine: {machine_line(record['machine'])}. Produced by "
             "`benchmarks/imbalance_table.py`; attributes ordered by minority-class share.", "",
             "| attribute | minority share | " + " | ".join(
                 f"{n} minority err | {n} majority err" for n in names) + " |",
             "|---|---|" + "---|---|" * len(names)]
    for a in attrs:
        p = first["train_positive_share"][a]
        cells = [f"{record['models'][n]['per_attribute'][a]['minority_error']:.3f} | "
                 f"{record['models'][n]['per_attribute'][a]['majority_error']:.3f}" for n in names]
        lines.append(f"| {a} | {min(p, 1 - p):.3f} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | | " + " | ".join(
        f"**{record['models'][n]['means']['minority_error']:.3f}** | "
        f"**{record['models'][n]['means']['majority_error']:.3f}**" for n in names) + " |")
    lines += ["", "Training commands:", ""]
    for n, cfg in record["training_configs"].items():
        if cfg:
            lines.append(f"- {n}: `bincam train --data {cfg['data']} --out {cfg['out']} --arch "
                         f"{cfg['arch']} --width {cfg['width']} --weighting {cfg['weighting']} "
                         f"--epochs {cfg['epochs']} --batch-size {cfg['batch_size']} --lr "
                         f"{cfg['lr']} --image-size {cfg['image_size']} --seed {cfg['seed']}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
