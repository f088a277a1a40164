"""The engine contract: every engine opened by ``open_engine`` has the same interface and gives
the same explanations; the README's embedding snippet runs as written."""

import re
from pathlib import Path

import numpy as np
import pytest

from bincam.errors import BincamError
from bincam.runtime import open_engine, resolve_engine

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models/synth-small-balanced"


def test_readme_embedding_snippet_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Embedding an engine"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    assert scope["maps"].shape == (2, 1, 112, 112) and scope["maps"].dtype == np.float32
    assert scope["pe"].shape == (2, 1) and scope["logits"].shape == (2, 40)
    assert scope["engine"].session is None  # closed by the with-statement


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    cache = tmp_path_factory.mktemp("export")
    opened = {name: open_engine(MODEL, name, export_cache=cache) for name in ("torch", "ort")}
    yield opened
    for engine in opened.values():
        engine.close()


def test_same_contract_and_same_answers(engines):
    rng = np.random.default_rng(11)
    x = rng.integers(1, 256, (3, 3, 112, 112), dtype=np.uint8)
    torch_engine, ort_engine = engines["torch"], engines["ort"]
    assert torch_engine.info.attributes == ort_engine.info.attributes
    assert torch_engine.info.gradient_layout == ort_engine.info.gradient_layout == "factored"
    assert (torch_engine.kind, ort_engine.kind) == ("torch", "ort")
    for engine in engines.values():
        assert not engine.supports("fused_epilogue")
        with pytest.raises(BincamError, match="no fused GPU epilogue"):
            engine.fused(x)
        out = engine.run(x, attributes=["Male", "Smiling"])
        assert out["logits"].shape == (3, 2) and out["channel_weights"].shape[0] == 2
        assert engine.run_forward(x).shape == (3, 40)
    for method in ("gradcam", "layercam", "gradcam++"):
        a = torch_engine.explain(x, method, "predicted", ["Male", 31])
        b = ort_engine.explain(x, method, "predicted", ["Male", 31])
        assert type(a) is type(b) and a.attributes == b.attributes == ["Male", "Smiling"]
        assert np.abs(a.logits - b.logits).max() < 1e-4
        assert np.abs(a.heatmaps() - b.heatmaps()).max() < 1e-3
        assert np.abs(a.proportional_energy() - b.proportional_energy()).max() < 1e-4
    np.testing.assert_allclose(torch_engine.run_forward(x), ort_engine.run_forward(x), atol=1e-4)


def test_open_engine_refuses_clearly(tmp_path):
    with pytest.raises(BincamError, match="must be one of auto, torch, ort, trt"):
        resolve_engine(MODEL, "tvm")
    with pytest.raises(BincamError, match="does not exist"):
        open_engine(tmp_path / "none.onnx")
    with pytest.raises(BincamError, match="not a checkpoint folder"):
        open_engine(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    with pytest.raises(BincamError, match="torch engine needs a checkpoint folder"):
        open_engine(tmp_path / "m.onnx", "torch")
    with pytest.raises(BincamError, match="not a loadable ONNX model"):
        open_engine(tmp_path / "m.onnx")
    assert resolve_engine(MODEL) == "torch" and resolve_engine(tmp_path / "m.onnx") == "ort"


def test_options_layers_paths_and_closed_engines(tmp_path):
    x = np.full((1, 3, 112, 112), 90, np.uint8)
    with pytest.raises(BincamError, match="the ort engine takes no option max_batch"):
        open_engine(MODEL, "ort", max_batch=8)
    with pytest.raises(BincamError, match="the torch engine takes no option spin"):
        open_engine(MODEL, spin=True)
    # a checkpoint given to ort is exported at the layer asked for, once per layer in the cache
    with open_engine(MODEL, "ort", layer="layer3", export_cache=tmp_path) as engine:
        assert engine.info.target_layer == "layer3" and engine.info.gradient_layout == "dense"
        ort_maps = engine.explain(x, attributes=["Male"]).heatmaps()
    with open_engine(MODEL / "model.safetensors", layer="layer3") as engine:  # a file inside
        assert engine.kind == "torch"
        assert np.abs(engine.explain(x, attributes=["Male"]).heatmaps() - ort_maps).max() < 1e-3
    with open_engine(MODEL, "ort", export_cache=tmp_path) as engine:
        assert engine.info.target_layer == "layer4.pre_relu"
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    engine = open_engine(MODEL, "ort", export_cache=tmp_path)
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(BincamError, match="engine is closed"):
        engine.explain(x)


def test_open_engine_names_what_a_model_can_be():
    with pytest.raises(BincamError, match="a model is a checkpoint folder, an ONNX file"):
        open_engine(np.zeros(3))


def test_cuda_provider_fallback_to_cpu_is_refused(engines, monkeypatch):
    """ONNX Runtime drops a CUDA provider it cannot load (a wheel for another CUDA major, no
    cuDNN) with a warning and builds the session on the CPU: asked for cuda, the engine refuses
    that session instead of running on the CPU silently. The CPU wheel here does exactly that
    once ``get_available_providers`` claims CUDA (as onnxruntime-gpu does before loading it)."""
    import onnxruntime as ort

    from bincam.runtime.ort_engine import OrtEngine

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = engines["ort"].model_bytes
    with pytest.raises(BincamError, match="could not use the CUDA provider.*CPUExecutionProvider"
                                          ".*onnxruntime-gpu.*or pass --device cpu"):
        OrtEngine(model, device="cuda")
    assert OrtEngine(model, device="cpu").session.get_providers() == ["CPUExecutionProvider"]
