"""The paper's tables from the aggregates: Markdown, LaTeX and CSV.

Layout of the main table: one row per attribute, ordered by minority-class share (most imbalanced
first); per model the minority- and majority-class error and the mean PE of minority- and
majority-predicted images. The unbalanced model's minority error and majority-predicted PE — the
two numbers the paper's argument rests on — are set in bold.
"""

from __future__ import annotations

import csv
import io

PAPER_COLUMNS = (("minority_error", "min. err"), ("majority_error", "maj. err"),
                 ("pe_minority", "PE min.-pred."), ("pe_majority", "PE maj.-pred."))
BOLD = ("minority_error", "pe_majority")
HEADLINE_COLUMNS = (("minority_error", "minority-class error"),
                    ("majority_error", "majority-class error"),
                    ("pe_minority", "PE, minority-predicted"),
                    ("pe_majority", "PE, majority-predicted"),
                    ("empty_majority", "empty maps, majority-predicted"),
                    ("bias_decides_majority", "bias decides, majority-predicted"),
                    ("pe_cue_minority", "cue PE, minority-predicted"))


def fmt(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def attribute_order(record: dict, reference: str) -> list[str]:
    per = record["models"][reference]["per_attribute"]
    return sorted(per, key=lambda a: (min(per[a]["train_positive_share"],
                                          1 - per[a]["train_positive_share"]), a))


def _rows(record: dict, reference: str, bold: tuple[str, str]):
    """``(attribute, minority class, share, [(value, is_bold) per model and column])``."""
    names = list(record["models"])
    for a in attribute_order(record, reference):
        ref = record["models"][reference]["per_attribute"][a]
        p = ref["train_positive_share"]
        cells = []
        for n in names:
            fig = record["models"][n]["per_attribute"].get(a)
            for key, _ in PAPER_COLUMNS:
                cells.append((None if fig is None else fig[key], n == reference and key in bold))
        yield a, "−" if ref["majority_positive"] else "+", min(p, 1 - p), cells


def paper_markdown(record: dict, reference: str) -> str:
    names = list(record["models"])
    head = ["attribute", "minority", "share"] + [f"{n} {label}" for n in names
                                                 for _, label in PAPER_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for a, cls, share, cells in _rows(record, reference, BOLD):
        text = [f"**{fmt(v)}**" if b and v is not None else fmt(v) for v, b in cells]
        lines.append(f"| {a} | {cls} | {share:.3f} | " + " | ".join(text) + " |")
    means = [fmt(record["models"][n]["means"].get(key)) for n in names for key, _ in PAPER_COLUMNS]
    lines.append("| **mean** | | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%")


def paper_latex(record: dict, reference: str) -> str:
    names = list(record["models"])
    cols = "l c r" + " r" * (len(names) * len(PAPER_COLUMNS))
    top = " & ".join(["", "", ""] + [f"\\multicolumn{{{len(PAPER_COLUMNS)}}}{{c}}{{{_tex(n)}}}"
                                     for n in names]) + " \\\\"
    head = " & ".join(["Attribute", "Min.", "Share"] + [_tex(label) for _ in names
                                                        for _, label in PAPER_COLUMNS]) + " \\\\"
    lines = ["\\begin{tabular}{" + cols + "}", "\\toprule", top, head, "\\midrule"]
    for a, cls, share, cells in _rows(record, reference, BOLD):
        text = [f"\\textbf{{{fmt(v)}}}" if b and v is not None else fmt(v).replace("—", "--")
                for v, b in cells]
        lines.append(" & ".join([_tex(a), "$-$" if cls == "−" else "$+$", f"{share:.3f}"]
                                + text) + " \\\\")
    means = [fmt(record["models"][n]["means"].get(key)).replace("—", "--")
             for n in names for key, _ in PAPER_COLUMNS]
    lines += ["\\midrule", " & ".join(["Mean", "", ""] + means) + " \\\\", "\\bottomrule",
              "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def per_attribute_csv(record: dict) -> str:
    """Long format: one row per (model, attribute) with every figure at full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = None
    for name, model in record["models"].items():
        for a, fig in model["per_attribute"].items():
            if keys is None:
                keys = list(fig)
                writer.writerow(["model", "attribute"] + keys)
            writer.writerow([name, a] + ["" if fig.get(k) is None else fig[k] for k in keys])
    return buf.getvalue()


def headline_markdown(record: dict) -> str:
    """Means over attributes, one row per model (the README's audit summary table)."""
    lines = ["| model | " + " | ".join(label for _, label in HEADLINE_COLUMNS) + " |",
             "|---|" + "---:|" * len(HEADLINE_COLUMNS)]
    for name, model in record["models"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(model["means"].get(key), 3)
                                                for key, _ in HEADLINE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def headline_csv(record: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model"] + [key for key, _ in HEADLINE_COLUMNS])
    for name, model in record["models"].items():
        writer.writerow([name] + ["" if model["means"].get(k) is None else model["means"][k]
                                  for k, _ in HEADLINE_COLUMNS])
    return buf.getvalue()
