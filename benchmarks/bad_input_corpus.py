"""Run the whole bad-input corpus (``tests/bad_corpus.py``) through the CLI and write the table
of cases, verdicts and messages to ``benchmarks/results/bad_input_corpus.{md,json}``.

    python benchmarks/bad_input_corpus.py [--out benchmarks/results/bad_input_corpus]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bad_corpus import build, run_case  # noqa: E402

from bincam.files import write_report  # noqa: E402
from bincam.machine import machine_info  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad_input_corpus"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bincam-corpus-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        cases = build(root)
        built = time.perf_counter() - start
        outcomes = [run_case(case, root) for case in cases]
        seconds = time.perf_counter() - start
        rows = [{"case": o.case.name, "command": o.case.argv[0], "verdict": o.verdict,
                 "status": o.status, "message": o.message.replace(str(root), "CORPUS")}
                for o in outcomes]
    counts = Counter(r["verdict"] for r in rows)
    machine = machine_info()
    lines = [f"# Bad-input corpus: {len(rows)} cases", "",
             f"Machine: {machine.get('cpu', 'unknown CPU')}, {machine.get('cores', '?')} cores; "
             f"corpus built in {built:.0f} s, all cases run in {seconds:.0f} s (in-process).", "",
             "| verdict | cases |", "|---|---|"]
    lines += [f"| {v} | {counts.get(v, 0)} |" for v in ("clean", "unclear", "partial", "silent",
                                                        "traceback")]
    lines += ["", "| case | exit | message |", "|---|---|---|"]
    lines += [f"| {r['case']} | {r['status']} | {r['message'].replace('|', '/')} |"
              for r in rows]
    write_report(args.out, "\n".join(lines) + "\n",
                 {"machine": machine, "counts": dict(counts), "cases": rows,
                  "seconds": seconds})
    print(f"{len(rows)} cases: {dict(counts)} → {args.out}.md")
    if counts.get("clean", 0) != len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
