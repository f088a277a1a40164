"""Speed of bincam's own checkpoints, one source tree against another (before/after a change),
written to ``benchmarks/results/own_checkpoint_speed.{md,json}``.

Each tree runs in its own subprocess with ``PYTHONPATH=<tree>/toolkit`` (so each imports its own
``bincam``), on the same checkpoint (default: the shipped ``models/synth-small-balanced``, 40
attributes @112) and the same random uint8 images. Per run, after a warm-up:

- ``torch``: ``open_engine(checkpoint, engine="torch").explain(images)`` (Grad-CAM, mode
  predicted, all attributes: logits + raw maps);
- ``ort``: the same on ONNX Runtime, on the file that tree's ``export_checkpoint`` writes;
- ``ort e2e``: ``ort`` + ``heatmaps()`` + ``proportional_energy()`` (what ``cam`` computes);
- ``export``: one ``export_checkpoint`` of the checkpoint (torch.onnx export + gradient graph);
- ``cam cli``: one ``python -m bincam cam CHECKPOINT`` on ``--cli-images`` PNG files (process
  start, imports, reading, explaining, writing 40 overlays and a grid per image,
  ``predictions.json``, ``cams.npz``).

The trees alternate (old, new, new, old, …) for ``--rounds`` rounds, so drifts in the load of
a shared machine hit both alike. Reported per scope: the median over all iterations per tree,
the ratio new/old of those medians, and the spread of the per-round ratios (min–max) as the
noise; "slower" means a ratio above 1.05 with every round's ratio above 1.

    nice python benchmarks/own_checkpoint_speed.py OLD_TREE NEW_TREE [--rounds 6] [--iters 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCOPES = ("torch", "ort", "ort e2e", "export", "cam cli")

# Runs inside the tree under test: only API that both old and new trees have.
WORKER = r"""
import json, sys, time
import numpy as np
import bincam
from bincam.export.model import export_checkpoint
from bincam.runtime import open_engine

checkpoint, (batch, iters, threads) = sys.argv[1], map(int, sys.argv[2:5])
model = bincam.load_checkpoint(checkpoint)
size = model.card.image_size
images = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
times = {}
start = time.perf_counter()
onnx_bytes = export_checkpoint(model).SerializeToString()
times["export"] = [time.perf_counter() - start]

def timed(call):
    call()  # warm-up
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out

with open_engine(checkpoint, engine="torch", threads=threads) as engine:
    times["torch"] = timed(lambda: engine.explain(images, "gradcam", "predicted"))
with open_engine(onnx_bytes, engine="ort", threads=threads) as engine:
    times["ort"] = timed(lambda: engine.explain(images, "gradcam", "predicted"))
    def e2e():
        result = engine.explain(images, "gradcam", "predicted")
        result.heatmaps(size), result.proportional_energy()
    times["ort e2e"] = timed(e2e)
print("TIMES " + json.dumps(times))
"""


def run_tree(tree: Path, args, image_dir: Path) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(tree / "toolkit"), OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([sys.executable, "-c", WORKER, str(args.checkpoint), str(args.batch),
                          str(args.iters), str(args.threads)], env=env, capture_output=True,
                         text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("TIMES "))
    times = json.loads(line[len("TIMES "):])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bincam", "cam", str(args.checkpoint),
                        str(image_dir), "--out", str(Path(tmp) / "cam")], env=env,
                       capture_output=True, check=True)
        times["cam cli"] = [time.perf_counter() - start]
    return times


def commit_of(tree: Path) -> str:
    """The tree's commit, ``+`` uncommitted changes where it has any."""
    git = ["git", "-C", str(tree)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(git + ["status", "--porcelain", "--", "toolkit"],
                           capture_output=True, text=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


def write_images(folder: Path, batch: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(batch):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for scope in SCOPES:
        old = [t for run in runs["old"] for t in run[scope]]
        new = [t for run in runs["new"] for t in run[scope]]
        per_round = [statistics.median(n[scope]) / statistics.median(o[scope])
                     for o, n in zip(runs["old"], runs["new"])]
        ratio = statistics.median(new) / statistics.median(old)
        rows.append({"scope": scope, "round_ratio_median": statistics.median(per_round),
                     "old_median_s": statistics.median(old),
                     "new_median_s": statistics.median(new), "ratio_new_old": ratio,
                     "old_min_s": min(old), "new_min_s": min(new),
                     "ratio_of_minima": min(new) / min(old),
                     "round_ratio_min": min(per_round), "round_ratio_max": max(per_round),
                     "slower": ratio > 1.05 and min(per_round) > 1.0, "samples": len(old)})
    return rows


def verdict(row: dict) -> str:
    """slower / faster / unchanged, or inconclusive where the rounds disagree by > 1.5×."""
    spread = row["round_ratio_max"] / row["round_ratio_min"]
    if spread > 1.5:
        return f"inconclusive (per-round ratios spread ×{spread:.1f}: machine load)"
    if row["slower"]:
        return "slower"
    return "faster" if row["ratio_new_old"] < 0.95 and row["round_ratio_max"] < 1 else \
        "unchanged (within noise)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="source tree before the change")
    parser.add_argument("new", type=Path, help="source tree after the change")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models/synth-small-balanced")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cli-images", type=int, default=2, help="PNG files for cam cli")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/own_checkpoint_speed"))
    parser.add_argument("--report-from", help="rebuild the report from a run's JSON instead")
    args = parser.parse_args()
    if args.report_from:
        return report(args.out, json.loads(Path(args.report_from).read_text()))
    from bincam.machine import machine_info

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    size = json.loads((args.checkpoint / "card.json").read_text())["image_size"]
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    start, load = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as image_dir:
        write_images(Path(image_dir), args.cli_images, size)
        for r in range(args.rounds):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                runs[which].append(run_tree(trees[which], args, Path(image_dir)))
                print(f"round {r} {which}: " + ", ".join(
                    f"{k} {statistics.median(v):.4f}" for k, v in runs[which][-1].items()),
                    flush=True)
    shown = (args.checkpoint.resolve().relative_to(ROOT)
             if args.checkpoint.resolve().is_relative_to(ROOT) else args.checkpoint)
    report(args.out, {"machine": machine_info(), "commits": {k: commit_of(v) for k, v in
                                                             trees.items()},
                      "checkpoint": str(shown), "size": size, "batch": args.batch,
                      "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
                      "cli_images": args.cli_images, "seconds": time.perf_counter() - start,
                      "load_average_1min": [load[0], os.getloadavg()[0]],
                      "cpus": os.cpu_count(), "runs": runs})


def report(out: str, record: dict) -> None:
    """The markdown and JSON of a run (``record``: its settings and per-tree times)."""
    from bincam.files import write_report
    from bincam.machine import machine_line

    rows = record["rows"] = summarize(record["runs"])
    r, load = record, record.get("load_average_1min", [float("nan")] * 2)
    lines = ["# Own checkpoints: speed before/after\n",
             f"{machine_line(r['machine'])}; shared with other jobs. Checkpoint "
             f"`{r['checkpoint']}` ({r.get('size', 112)} px), batch {r['batch']}, "
             f"{r['threads']} thread(s), Grad-CAM mode predicted, all attributes. Old tree: "
             f"commit {r['commits']['old']}, new tree: {r['commits']['new']} (each its own "
             "subprocess with `PYTHONPATH=<tree>/toolkit`), alternating for "
             f"{r['rounds']} rounds, {r['iters']} iterations per engine scope after a warm-up "
             f"(export and `cam cli` on {r.get('cli_images', 2)} PNG files: one each per "
             f"round). Total {r['seconds']:.0f} s. Load average (1 min) at start and end: "
             f"{r.get('load_note') or f'{load[0]:.1f}, {load[1]:.1f}'} on {r.get('cpus', 2)} "
             "cores. Written by "
             "`benchmarks/own_checkpoint_speed.py`.\n",
             "Under heavy load the fastest iteration of each tree (least interference) is the "
             "steadier figure; medians carry the load of the moment.\n",
             "| scope | old min s | new min s | new/old (minima) | old median s | new median s "
             "| new/old (medians) | per-round new/old, median (min–max) | verdict (rounds) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['scope']} | {row['old_min_s']:.4f} | {row['new_min_s']:.4f} | "
                     f"{row['ratio_of_minima']:.3f} | {row['old_median_s']:.4f} | "
                     f"{row['new_median_s']:.4f} | {row['ratio_new_old']:.3f} | "
                     f"{row['round_ratio_median']:.3f} ({row['round_ratio_min']:.3f}–"
                     f"{row['round_ratio_max']:.3f}) | {verdict(row)} |")
    write_report(out, "\n".join(lines) + "\n", record)


if __name__ == "__main__":
    main()
