"""Present a benchmark record: Rich tables for the terminal, Markdown for docs, and the JSON file
(written to a temporary name, then renamed)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from bincam.files import write_atomic
from bincam.machine import machine_line


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _band(r: dict) -> str:
    return f"{r['median']:.2f} [{r['low']:.2f}–{r['high']:.2f}]"


def latency_rows(record: dict) -> list[list[str]]:
    rows = []
    for batch, timing in record["timing"].items():
        for row in timing["rows"]:
            sc, mem = row["scopes"], row["memory"]
            cuda = mem["cuda_max_allocated_bytes"]
            rows.append([row["engine"], batch, _ms(sc["forward"]["p50_s"]), _ms(sc["cam"]["p50_s"]),
                         _ms(sc["end_to_end"]["p50_s"]), _ms(sc["end_to_end"]["p90_s"]),
                         _ms(sc["end_to_end"]["p99_s"]), f"{sc['end_to_end']['images_per_s']:.1f}",
                         f"{mem['peak_rss_bytes'] / 2 ** 20:.0f}"
                         + (f" / {cuda / 2 ** 20:.0f}" if cuda is not None else "")])
    return rows


LATENCY_HEADER = ["engine", "batch", "fwd p50 ms", "CAM p50 ms", "e2e p50 ms", "e2e p90 ms",
                  "e2e p99 ms", "e2e img/s", "peak RSS MiB"]


def ratio_rows(record: dict) -> list[list[str]]:
    """CAM overhead per engine and batch, engine vs engine, and each baseline vs each engine."""
    rows = []
    for b, t in record["timing"].items():
        for row in t["rows"]:
            rows += [[f"{row['engine']} batch {b}: {name}", _band(r)]
                     for name, r in row["ratios"].items()]
        rows += [[f"batch {b}: {name}", _band(r)] for name, r in t["cross"].items()]
    for baseline in record.get("baselines", {}).values():
        rows += [[name + " (per image)", _band(r)] for name, r in baseline["vs"].items()]
    return rows


FIDELITY_HEADER = ["engine", "images", "flips", "logits max", "raw rel max", "final max",
                   "1−Pearson max", "IoU20 min", "PE mean", "PE max"]


def fidelity_rows(record: dict) -> list[list[str]]:
    rows = []
    for name, f in record.get("fidelity", {}).items():
        o = f["overall"]
        raw = o.get("raw-map rel error")
        rows.append([name, str(f["images"]), f"{o['prediction flips']['sum']:.0f}",
                     f"{o['logits abs diff']['max']:.1e}", f"{raw['max']:.1e}" if raw else "n/a",
                     f"{o['final-map max abs diff']['max']:.1e}", f"{1 - o['pearson']['min']:.1e}",
                     f"{o['top-20% IoU']['min']:.4f}", f"{o['PE abs diff']['mean']:.1e}",
                     f"{o['PE abs diff']['max']:.1e}"])
    return rows


def _rich(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """A table that fits an 80-column terminal: headers and cells wrap or fold, never "…"."""
    table = Table(title=escape(title), title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r in rows:
        table.add_row(*map(escape, r))
    return table


FIDELITY_SPLIT = 5  # the console shows the fidelity columns as two tables: logits, then maps


def rich_tables(record: dict) -> list[Table]:
    m = record["model"]
    tables = [_rich(f"{m['described']} @{m['image_size']}, {m['attributes']} attributes, "
                    f"{record['config']['method']} — {machine_line(record['machine'])}",
                    LATENCY_HEADER, latency_rows(record)),
              _rich(f"ratios: median [range over {record['config']['rounds']} rounds]",
                    ["ratio", "value"], ratio_rows(record))]
    if record.get("fidelity"):
        rows, k = fidelity_rows(record), FIDELITY_SPLIT
        tables += [_rich("fidelity vs eager fp32 torch, same inputs: logits",
                         FIDELITY_HEADER[:k], [r[:k] for r in rows]),
                   _rich("fidelity vs eager fp32 torch: maps (abs diffs; IoU20: top-20 % regions)",
                         FIDELITY_HEADER[:1] + FIDELITY_HEADER[k:], [r[:1] + r[k:] for r in rows])]
    return tables


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def skipped_lines(record: dict) -> list[str]:
    return [f"baseline {n}: {why}" for n, why in record.get("baselines_skipped", {}).items()]


def markdown(record: dict) -> str:
    m, c = record["model"], record["config"]
    lines = [f"### {m['described']} @{m['image_size']}, {m['attributes']} attributes, {c['method']}",
             "", f"Machine: {machine_line(record['machine'])}. {c['iters']} iterations in "
             f"{c['rounds']} rounds (each after {c['warmup']} warm-up calls), inputs: {c['images']}; `bincam bench` "
             f"(`{' '.join(['bincam', 'bench'] + record['command'][2:])}`).", ""]
    lines += _md(LATENCY_HEADER, latency_rows(record)) + [""]
    lines += _md(["ratio", f"median [range over {c['rounds']} rounds]"], ratio_rows(record)) + [""]
    if record.get("fidelity"):
        lines += _md(FIDELITY_HEADER, fidelity_rows(record)) + [""]
    lines += [f"- {line}" for line in skipped_lines(record)]
    return "\n".join(lines) + "\n"


def write_json(record: dict, path: Path) -> Path:
    write_atomic(path, json.dumps(record, indent=1).encode())
    return path


HEADLINE_HEADER = ["model", "engine", "batch", "e2e ms/image", "CAM / forward", "e2e / forward",
                   "torch / engine (CAM)", "pytorch-grad-cam / engine per image (e2e)"]


def headline_markdown(records: list[dict]) -> str:
    """The README's performance table: one row per model × engine × batch, ratios as median
    [IQR], then each record's machine and command."""
    rows, notes = [], []
    for r in records:
        m = r["model"]
        vs = r.get("baselines", {}).get("pytorch-grad-cam", {}).get("vs", {})
        for b, t in r["timing"].items():
            for row in t["rows"]:
                cross = t["cross"].get(f"torch / {row['engine']} CAM")
                e2e = row["scopes"]["end_to_end"]["p50_s"] / int(b)
                ref = vs.get(f"pytorch-grad-cam / {row['engine']} e2e batch {b}")
                rows.append([f"{m['described']} @{m['image_size']}", row["engine"], b,
                             f"{e2e * 1e3:.1f}", _band(row["ratios"]["CAM / forward"]),
                             _band(row["ratios"]["e2e / forward"]),
                             _band(cross) if cross else "",
                             _band(ref) if ref else ""])
        for name, baseline in r.get("baselines", {}).items():
            notes.append(f"{name} (`|z|` target, one call per attribute) on {m['described']}: "
                         f"{baseline['per_image']['p50_s']:.2f} s per image")
        notes.append(f"{m['described']}: {machine_line(r['machine'])}; "
                     f"`{' '.join(['bincam', 'bench'] + r['command'][2:])}`")
    return "\n".join(_md(HEADLINE_HEADER, rows) + [""] + [f"- {n}" for n in notes]) + "\n"
