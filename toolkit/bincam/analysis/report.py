"""Merge the shards, compute the aggregates and write every report file of ``bincam analyze``.

``OUT/aggregates.json`` holds only what the numbers are (bit-identical for any sharding, process
count or resume); timings and the machine go to ``OUT/timing.json``. ``report.md`` (and
``report.html``, the same content) links the tables and figures.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path

from bincam.analysis import plots, tables
from bincam.analysis.aggregate import figures, summarise
from bincam.analysis.compute import average_maps
from bincam.analysis.models import majority_from
from bincam.files import write_atomic

PAPER_RERUN = ("| paper's AFFACT on CelebA, unbalanced (third-party re-run) | 0.282 | 0.044 | 0.60 | "
               "0.16 |\n| paper's AFFACT on CelebA, balanced (third-party re-run) | 0.100 | 0.124 "
               "| 0.59 | 0.49 |\n")


def reference_model(record: dict) -> str:
    """The unbalanced model: trained with weighting ``none``, else named so, else the first."""
    names = list(record["models"])
    for n in names:
        if record["models"][n].get("weighting") == "none":
            return n
    return next((n for n in names if "unbalanced" in n.lower()), names[0])


def write_report(options, sources, facts_of: dict, ds, out: Path, timings: dict,
                 started: float) -> dict:
    """``facts_of``: ``models.describe`` of each source, by name; ``started``:
    ``time.perf_counter()`` at the start of the command (the wall time is taken last)."""
    from bincam.analysis.merge import merge_model
    from bincam.core.energy import MaskEnergy
    from bincam.data.dataset import fixed_masks, is_csv
    from bincam.machine import machine_info

    record = {"format": "bincam.analyze/1", "data": options.data, "split": options.split,
              "frontal": options.frontal, "images": len(ds), "method": options.method,
              "engine": options.engine, "pe_against": pe_against(ds), "models": {}}
    timing = {"machine": machine_info(), "processes": int(os.environ.get("WORLD_SIZE", "1")),
              "models": {}}
    figures_of = {}
    for source in sources:
        facts = facts_of[source.name]
        share, majority, origin = majority_from(facts, ds.csv_path if is_csv(ds) else
                                                ds.list_dir, facts.attributes)
        totals, sums, shard_seconds = merge_model(out, source.name, len(ds), options.shard_size,
                                                  majority)
        summary = summarise(figures(totals, majority), facts.attributes, share, majority)
        write_atomic(out / "results" / source.name / "attributes.json",
                     json.dumps(facts.attributes).encode())
        summary.update({"model": str(source.path), "sha256": source.digest,
                        "weighting": facts.weighting, "majority_from": origin,
                        "image_size": facts.image_size})
        record["models"][source.name] = summary
        masks, _ = fixed_masks(ds, facts.attributes, facts.image_size)
        maps = average_maps(sums, MaskEnergy(masks, tuple(sums.scaled.shape[-2:])))
        figures_of[source.name] = f"plots/average_cams_{source.name}.png"
        write_atomic(out / figures_of[source.name], plots.average_cam_grid(
            maps, sums.count, facts.attributes, masks,
            sums.image / max(len(ds), 1), f"{source.name}: mean final {options.method} map per "
            "attribute, predicted + | − (mask outlined)"))
        computed = timings.get(source.name, {})
        timing["models"][source.name] = {
            "images_per_second_all_shards": len(ds) / shard_seconds if shard_seconds else None,
            "images_this_run": computed.get("images", 0),
            "compute_seconds_all_shards": shard_seconds,
            "open_seconds_this_run": computed.get("open_seconds", 0.0),  # exports included
            "images_per_second_this_run": (computed["images"] / computed["seconds"]
                                           if computed.get("seconds") else None)}
    reference = reference_model(record)
    record["reference_model"] = reference
    order = tables.attribute_order(record, reference)
    write_atomic(out / "aggregates.json", json.dumps(record, indent=1).encode())
    files = {"tables/paper.md": tables.paper_markdown(record, reference),
             "tables/paper.tex": tables.paper_latex(record, reference),
             "tables/paper_per_attribute.csv": tables.per_attribute_csv(record),
             "tables/headline.md": tables.headline_markdown(record),
             "tables/headline.csv": tables.headline_csv(record)}
    for name, text in files.items():
        write_atomic(out / name, text.encode())
    write_atomic(out / "plots/errors.png", plots.error_bars(record, order))
    write_atomic(out / "plots/pe_by_class.png", plots.pe_by_class(record, order))
    timing["wall_seconds"] = time.perf_counter() - started  # the whole command, up to here
    write_atomic(out / "timing.json", json.dumps(timing, indent=1).encode())
    text = report_markdown(record, timing, files, figures_of)
    write_atomic(out / "report.md", text.encode())
    write_atomic(out / "report.html", markdown_to_html(text, "bincam analyze").encode())
    return record


def pe_against(ds) -> str:
    """What the PE columns measure against, in words, for the report."""
    from bincam.data.dataset import has_regions, is_csv

    if not is_csv(ds):
        return "each attribute's fixed CelebA mask region"
    masks = ds.has_label_masks
    if has_regions(ds):
        return ("each image's own evidence regions (boxes / mask images of the CSV dataset)" +
                (", else the label's fixed mask (label_masks/)" if masks else "") +
                "; images without a region are left out of the PE means")
    return ("each label's fixed mask (label_masks/)" if masks else
            "nothing: the CSV dataset has no regions or label masks (PE is empty)")


def wall_time_line(record: dict, timing: dict) -> str:
    """The report's sentence on time: this command's wall time, or, when it computed nothing
    (a resume of a finished run), that the results come from earlier runs and their time."""
    models = timing["models"]
    now = {n: m["images_this_run"] for n, m in models.items()}
    compute = sum(m.get("compute_seconds_all_shards") or 0.0 for m in models.values())
    opening = sum(m.get("open_seconds_this_run", 0.0) for m in models.values())
    wall = timing["wall_seconds"]
    who = "This command" if timing.get("processes", 1) == 1 else "Process 0 of this command"
    if not any(now.values()) and timing.get("processes", 1) > 1:
        return (f"Process 0 of this command computed no shard (its shards come from earlier "
                f"runs; the other processes' work is not timed here); this command took "
                f"{wall:.0f} s, and the shards record {compute:.0f} s of computing in all.")
    if not any(now.values()):
        return (f"{who} computed nothing: every shard was already there, so the results come "
                f"from earlier runs, whose shards record {compute:.0f} s of computing; this "
                f"command took {wall:.0f} s (checking the inputs, merging the shards, writing the "
                "report).")
    earlier = any(n < record["images"] for n in now.values())
    return (f"Wall time of this command {wall:.0f} s, from its start to the report (opening the "
            f"models, exporting checkpoints to ONNX included: {opening:.0f} s); {who.lower()} "
            "computed " + ", ".join(f"{n} images with {name}" for name, n in now.items())
            + (", the rest come from earlier runs" if earlier else "") +
            f"; the shards record {compute:.0f} s of computing in all.")


def report_markdown(record: dict, timing: dict, files: dict, figures_of: dict) -> str:
    from bincam.machine import machine_line

    ref = record["reference_model"]
    lines = [f"# Bias audit: {record['data']} ({record['split']} split"
             f"{', frontal' if record['frontal'] else ''}, {record['images']} images)", "",
             f"Method `{record['method']}` (binary rule: each map explains the predicted class), "
             f"engine `{record['engine']}`. Machine: {machine_line(timing['machine'])}. "
             + wall_time_line(record, timing), ""]
    for name, m in record["models"].items():
        t = timing["models"][name]
        speed = t["images_per_second_all_shards"]
        lines.append(f"- **{name}**: `{m['model']}` (weighting {m['weighting'] or 'unknown'}; "
                     f"majority class from {m['majority_from']}); "
                     f"{'%.0f' % speed if speed else '?'} images/s per process")
    lines += ["", "## Means over attributes", "", tables.headline_markdown(record).rstrip(), "",
              "For context, the paper's AFFACT on CelebA (*Biased Binary Attribute Classifiers "
              "Ignore the Majority Classes*, SDS 2024, the rule bincam's README cites; a "
              "third-party re-run, not measured by bincam; minority err, majority err, PE "
              "minority-predicted, PE majority-predicted):", "",
              "| model | minority-class error | majority-class error | PE, minority-predicted "
              "| PE, majority-predicted |", "|---|---:|---:|---:|---:|", PAPER_RERUN.rstrip(), "",
              f"PE is measured against {record.get('pe_against', 'the attribute masks')}. "
              "Empty maps: the final map is all zero (no positive evidence for the predicted "
              "class). Bias decides: for an affine head `z = e + b`; the image evidence `e` alone "
              "points to the other class (or is 0). Cue PE: PE against the synthetic generator's "
              "exact cue mask, over images that carry a cue for the attribute.", "",
              f"## Per attribute (ordered by minority-class share; {ref}'s minority error and "
              "majority-predicted PE in bold)", "", tables.paper_markdown(record, ref).rstrip(), "",
              "Tables as files: " + ", ".join(f"[{Path(f).name}]({f})" for f in files), "",
              "## Figures", "", "![errors by class](plots/errors.png)", "",
              "![PE by predicted class](plots/pe_by_class.png)", ""]
    for name, path in figures_of.items():
        lines += [f"![average maps of {name}]({path})", ""]
    lines += ["## Checks", ""]
    for name, m in record["models"].items():
        spread = m["means"].get("bias_spread")
        lines.append(f"- {name}: " + ("no affine head, so no evidence/bias split" if spread is None
                                      else f"`b = z − e` varies by {spread:.1e} (std over images,"
                                      " mean over attributes): the head is affine as assumed"))
    lines += ["", "Per-image results: `results/NAME/COLUMN.npy` (index, labels, logits, pe, empty, "
              "evidence, pe_cue; maps with --save-maps), in the order of the split's list; "
              "all figures: `aggregates.json`.", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', text)


def markdown_to_html(text: str, title: str) -> str:
    """The subset of Markdown the report uses: headings, lists, pipe tables, images, paragraphs."""
    body, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r) <= set("|-: ")]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            body.append("<table>" + "".join(
                "<tr>" + "".join(f"<{t}>{_inline(c)}</{t}>" for c in row) + "</tr>"
                for row, t in zip(cells, ["th"] + ["td"] * (len(cells) - 1))) + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if m := re.match(r"(#+) (.*)", line):
            body.append(f"<h{len(m[1])}>{_inline(m[2])}</h{len(m[1])}>")
        elif m := re.match(r"!\[(.*)\]\((.*)\)", line):
            body.append(f'<p><img src="{html.escape(m[2])}" alt="{html.escape(m[1])}" '
                        'style="max-width:100%"></p>')
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:"
             "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body) +
            "\n</body></html>\n")
