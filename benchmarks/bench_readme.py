"""Regenerate the README's performance table from `bincam bench --json` records.

Replaces the text between `<!-- bench:start -->` and `<!-- bench:end -->` in README.md with the
headline table (`bincam.bench.report.headline_markdown`) of the given records, in order.

    python benchmarks/bench_readme.py benchmarks/results/bench_affact_cpu.json \
        benchmarks/results/bench_synth_small_cpu.json [--readme README.md] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bincam.bench.report import headline_markdown

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+", type=Path)
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    args = ap.parse_args()
    table = headline_markdown([json.loads(p.read_text()) for p in args.records])
    text = args.readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        print(f"{args.readme} has no {START} … {END} block", file=sys.stderr)
        return 2
    updated = pattern.sub(lambda _m: f"{START}\n{table}{END}", text)
    if args.check:
        return 0 if updated == text else 1
    args.readme.write_text(updated)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
