"""Every case of the bad-input corpus (``tests/bad_corpus.py``) through the CLI: exit status 2,
exactly one ``error:`` line with the expected text, no traceback, and no file under the corpus
folder created, removed or changed. Also the same contract for a handful of cases in a real
subprocess (exit status and stderr as a user sees them)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from bad_corpus import build, run_case


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, build(root)


def test_every_bad_input_is_refused_cleanly(corpus):
    root, cases = corpus
    outcomes = [run_case(case, root) for case in cases]
    verdicts = Counter(o.verdict for o in outcomes)
    failed = [f"{o.case.name}: {o.verdict} (status {o.status}) "
              f"{(o.traceback.strip().splitlines() or [''])[-1] or o.message} {o.changed[:3]}"
              for o in outcomes if o.verdict != "clean"]
    assert not failed, f"{dict(verdicts)}\n" + "\n".join(failed)
    assert len(cases) >= 240 and verdicts["clean"] == len(cases)
    commands = {case.argv[0] for case in cases}
    assert commands >= {"info", "cam", "export", "analyze", "bench", "train", "data",
                        "convert-affact", "serve", "build"}


@pytest.mark.parametrize("name", ["cam: card 39 names", "cam --batch-size abc",
                                  "convert-affact missing storage", "analyze data corrupt cues"])
def test_cases_in_a_subprocess(corpus, name):
    root, cases = corpus
    case = next(c for c in cases if c.name == name)
    proc = subprocess.run([sys.executable, "-m", "bincam", *case.argv], capture_output=True,
                          text=True, timeout=300)
    lines = [" ".join(ln.split()) for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and case.expect in errors[0], lines
    assert not (root / "out").exists()
