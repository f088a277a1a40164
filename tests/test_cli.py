"""CLI: bad input gives one clear line on stderr, exit status 2, no traceback, no partial output."""

import subprocess
import sys

import pytest
import torch

from bincam.checkpoint import card_for, save_checkpoint
from bincam.nets import build_net


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bincam", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def assert_user_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    text = " ".join(proc.stderr.split())
    assert text.count("error:") == 1 and text.startswith("error:"), text  # nothing before it
    assert pattern in text, text


def test_bad_data_spec_and_missing_dataset(tmp_path):
    assert_user_error(run("train", "--data", "imagenet", "--out", str(tmp_path / "o")),
                      "--data must look like synth:DIR, celeba:DIR or csv:FILE")
    assert_user_error(run("train", "--data", f"synth:{tmp_path / 'none'}", "--out",
                          str(tmp_path / "o")), "does not exist")
    assert not (tmp_path / "o").exists()


def test_bad_arch_and_weighting(tmp_path, synth_small):
    assert_user_error(run("train", "--data", f"synth:{synth_small}", "--out", str(tmp_path / "o"),
                          "--arch", "vgg"), "unknown --arch 'vgg'")
    assert_user_error(run("train", "--data", f"synth:{synth_small}", "--out", str(tmp_path / "o"),
                          "--weighting", "inverse"), "unknown --weighting 'inverse'")


def test_info_and_convert_errors(tmp_path):
    assert_user_error(run("info", str(tmp_path)), "no card.json")
    evil = tmp_path / "evil.pth"

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, evil)
    proc = run("convert-affact", str(evil), "--out", str(tmp_path / "ckpt"))
    assert_user_error(proc, "refused: the pickle asks for builtins.print")
    assert "pwned" not in proc.stdout
    assert not (tmp_path / "ckpt").exists()


def test_synth_errors_and_success(tmp_path):
    assert_user_error(run("data", "synth", "--out", str(tmp_path), "--n", "0"), "--n must be")
    proc = run("data", "synth", "--out", str(tmp_path), "--n", "4", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "celeba" / "img_align_celeba").iterdir())) == 4
    assert_user_error(run("data", "synth", "--out", str(tmp_path), "--n", "4"), "already exists")


def test_info_prints_a_card(tmp_path):
    model = build_net("small", num_outputs=2, width=8)
    save_checkpoint(model, card_for(model, ["Male", "Young"], 64), tmp_path / "c")
    proc = run("info", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert "layer4.pre_relu" in proc.stdout  # the result goes to stdout, to be piped


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["data", "synth", "--help"]])
def test_help(args):
    proc = run(*args)
    assert proc.returncode == 0 and "Usage" in proc.stdout
