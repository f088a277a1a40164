"""The TensorRT plan cache's keys, timing-cache names and refusals, and clear errors where
TensorRT is missing; building and running plans needs TensorRT and a GPU (skipped otherwise)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bincam.checkpoint import card_for
from bincam.errors import BincamError
from bincam.export.model import export_checkpoint, save_onnx
from bincam.nets import build_net
from bincam.runtime.trt_engine import device_index
from bincam.runtime.trt_plan import check_plan_record, plan_key, timing_cache_path

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
GPU = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_plan_key_changes_with_everything_a_plan_depends_on():
    base = plan_key(b"model", "10.13.0", GPU, "fp32", (1, 8, 32))
    variants = [plan_key(b"model2", "10.13.0", GPU, "fp32", (1, 8, 32)),
                plan_key(b"model", "11.4.1", GPU, "fp32", (1, 8, 32)),
                plan_key(b"model", "10.13.0", {**GPU, "gpu": "NVIDIA A100"}, "fp32", (1, 8, 32)),
                plan_key(b"model", "10.13.0", {**GPU, "compute_capability": "8.0"}, "fp32",
                         (1, 8, 32)),
                plan_key(b"model", "10.13.0", GPU, "fp16", (1, 8, 32)),
                plan_key(b"model", "10.13.0", GPU, "fp32", (1, 8, 64))]
    assert len({v["key"] for v in variants} | {base["key"]}) == 7
    assert plan_key(b"model", "10.13.0", GPU, "fp32", (1, 8, 32)) == base


def test_a_stale_or_foreign_plan_is_refused():
    key = plan_key(b"model", "10.13.0", GPU, "fp16", (1, 8, 32))
    check_plan_record(dict(key), key, Path("p.plan"))  # the matching record passes
    foreign = plan_key(b"model", "10.13.0", {**GPU, "gpu": "NVIDIA A100"}, "fp16", (1, 8, 32))
    with pytest.raises(BincamError, match="gpu differ: built for NVIDIA A100.*delete it"):
        check_plan_record(foreign, key, Path("p.plan"))
    stale = plan_key(b"model", "10.9.0", GPU, "fp16", (1, 8, 32))
    with pytest.raises(BincamError, match="tensorrt differ"):
        check_plan_record(stale, key, Path("p.plan"))
    with pytest.raises(BincamError, match="profile differ"):
        check_plan_record({**key, "profile": [1, 8, 64]}, key, Path("p.plan"))


def test_timing_caches_are_kept_per_tensorrt_version_and_gpu(tmp_path):
    names = {timing_cache_path(tmp_path, version, gpu)
             for version in ("10.13.0", "11.4.1")
             for gpu in (GPU, {**GPU, "gpu": "NVIDIA A100"}, {**GPU, "compute_capability": "8.0"})}
    assert len(names) == 6 and all(p.parent == tmp_path and p.suffix == ".cache" for p in names)
    assert timing_cache_path(tmp_path, "10.13.0", GPU) == \
        tmp_path / "timing-10.13.0_NVIDIA_H100_80GB_HBM3_sm9.0.cache"


def test_device_names():
    assert device_index("cuda") == 0 and device_index("cuda:3") == 3
    for bad in ("cpu", "cuda:x", "gpu:0"):
        with pytest.raises(BincamError, match="cuda or cuda:N"):
            device_index(bad)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_net("small", width=8).eval()
    from bincam.attributes import ATTRIBUTES

    model.card = card_for(model, list(ATTRIBUTES), 64)
    return save_onnx(export_checkpoint(model), tmp_path_factory.mktemp("m") / "m.onnx")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_clear_errors_without_tensorrt(onnx_file, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "bincam", *args], capture_output=True,
                              text=True, timeout=300)

    for proc in (run("build", str(onnx_file)),
                 run("cam", str(onnx_file), str(onnx_file), "--engine", "trt", "--out",
                     str(tmp_path / "o"))):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "needs TensorRT: pip install 'bincam[trt]'" in " ".join(proc.stderr.split())
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed")
def test_trt_engine_equals_ort(onnx_file, tmp_path, monkeypatch):
    import numpy as np

    from bincam.runtime.ort_engine import OrtEngine
    from bincam.runtime.trt_engine import TrtEngine

    monkeypatch.setenv("BINCAM_CACHE", str(tmp_path))
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    with TrtEngine(onnx_file) as engine, OrtEngine(onnx_file) as ort:
        trt_out, ort_out = engine.run(x), ort.run(x)
        assert set(trt_out) == set(ort_out)
        for name, value in ort_out.items():
            assert trt_out[name].dtype == np.float32, name
            assert np.abs(trt_out[name] - value).max() <= 1e-3 * max(1.0, np.abs(value).max()), \
                name
        assert len(list((tmp_path / "trt").glob("*.plan"))) == 1
        assert len(list((tmp_path / "trt").glob("timing-*.cache"))) == 1
        assert np.abs(engine.run_forward(x) - ort_out["logits"]).max() <= 1e-3
        assert len(list((tmp_path / "trt").glob("*.plan"))) == 2  # + the forward-only plan
        picked = engine.run(x, attributes=["Male", "Smiling"])
        assert picked["logits"].shape == (3, 2)
        expected = ort.explain(x)
    # from the cache, replayed as a CUDA graph
    with TrtEngine(onnx_file, cuda_graphs=True) as again:
        assert again.supports("fused_epilogue")
        assert np.abs(again.run(x)["logits"] - ort_out["logits"]).max() <= 1e-3
        fused = again.fused(x, maps="u8")  # engine buffers read in place by the fused kernel
        assert np.abs(fused["pe"] - expected.proportional_energy()).max() <= 1e-3
        assert np.abs(fused["maps"] / 255.0 - expected.heatmaps()).max() <= 1e-2
        assert np.abs(again.explain(x).raw - expected.raw).max() <= 1e-3 * max(
            1.0, np.abs(expected.raw).max())
    again.close()  # idempotent
