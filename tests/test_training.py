"""Training: determinism for a seed, exact resume after a kill, refusals, and 2-process DDP."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bincam.checkpoint import load_checkpoint
from bincam.errors import BincamError
from bincam.training import TrainConfig
from bincam.training.loop import TrainReporter, lr_at, train, weighted_bce


def config(data, out, **kw):
    base = dict(data=f"synth:{data}", out=str(out), epochs=2, batch_size=32, image_size=64,
                width=8, threads=1, seed=7, decode_workers=1)
    base.update(kw)
    return TrainConfig(**base)


def final_weights(out):
    return {k: v for k, v in load_file(str(out / "last" / "train_state.safetensors")).items()}


class KillAfterFirstEpoch(TrainReporter):
    def epoch_end(self, record):
        raise KeyboardInterrupt  # as if the process were killed once epoch 1 was saved


def test_same_seed_same_weights_and_exact_resume(tmp_path, synth_small):
    a = train(config(synth_small, tmp_path / "a", weighting="balanced"))
    b = train(config(synth_small, tmp_path / "b", weighting="balanced"))
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    with pytest.raises(KeyboardInterrupt):
        train(config(synth_small, tmp_path / "c", weighting="balanced"), KillAfterFirstEpoch())
    train(config(synth_small, tmp_path / "c", weighting="balanced", resume=True))
    wc = final_weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)

    model = load_checkpoint(a)
    card = model.card
    assert card.training["config"]["weighting"] == "balanced"
    assert card.positive_counts is not None and len(card.positive_counts) == 40
    assert set(card.validation["means"]) >= {"minority_error", "majority_error", "fnr", "fpr"}
    assert card.training["history"][0]["images_per_s"] > 0


def test_refusals(tmp_path, synth_small):
    out = tmp_path / "run"
    train(config(synth_small, out, epochs=1))
    with pytest.raises(BincamError, match="already holds a training run"):
        train(config(synth_small, out, epochs=1))
    with pytest.raises(BincamError, match="differ from the saved run: lr"):
        train(config(synth_small, out, epochs=2, lr=0.1, resume=True))
    with pytest.raises(BincamError, match="nothing to resume"):
        train(config(synth_small, tmp_path / "fresh", resume=True))
    with pytest.raises(BincamError, match="unknown --weighting"):
        train(config(synth_small, tmp_path / "x", weighting="inverse"))


def test_loss_and_schedule():
    z = torch.tensor([[2.0, -1.0]])
    y = torch.tensor([[1.0, 1.0]])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    got = weighted_bce(z, y, torch.tensor([3.0, 0.5]), torch.tensor([1.0, 1.0]))
    assert torch.isclose(got, (3 * plain[0, 0] + 0.5 * plain[0, 1]) / 2)
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


@pytest.mark.slow
def test_two_process_ddp(tmp_path, synth_small):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "bincam", "train", "--data", f"synth:{synth_small}", "--out", str(out),
           "--epochs", "1", "--batch-size", "32", "--image-size", "64", "--width", "8",
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_checkpoint(out)
    assert model.card.training["world_size"] == 2
    assert model.card.training["train_images"] == 128
    assert len(model.card.training["history"]) == 1
