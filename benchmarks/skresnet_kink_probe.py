"""Why skresnet18's mid-network row of the timm table differs from float64 autograd on one
image: a ReLU input within float32 rounding of zero that ONNX Runtime (float32) and torch
(float64) put on opposite sides of the kink. Prints, per residual-block ReLU after the CAM
tensor, the inputs whose sign differs between the two forwards of image 1 (the table's images:
seed 0, two random and one flat). Usage: ``python benchmarks/skresnet_kink_probe.py`` (~1 min).
Result in ``benchmarks/results/conformance_timm_notes.md``."""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conformance_timm import export_legacy  # noqa: E402
from conformance_timm_models import build_timm  # noqa: E402

RELUS = {"layer3.1.act": "/layer3/layer3.1/act/Relu", "layer4.1.act": "/layer4/layer4.1/act/Relu"}


def main() -> None:
    torch.set_num_threads(1)
    model, size = build_timm("skresnet18", 96, None)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random((2, 3, size, size), dtype=np.float32),
                        np.full((1, 3, size, size), 0.5, np.float32)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "skresnet18.onnx"
        export_legacy(model, size, path)
        graph = onnx.load(str(path))
    inputs = {n.name: n.input[0] for n in graph.graph.node if n.name in RELUS.values()}
    for name in inputs.values():
        graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {session.get_inputs()[0].name: x})))
    net, seen = copy.deepcopy(model).double().eval(), {}
    for name, module in net.named_modules():
        if name in RELUS:  # a copy: the ReLU runs in place
            module.register_forward_pre_hook(
                lambda _m, inp, name=name: seen.__setitem__(name, inp[0].detach().clone().numpy()))
    with torch.no_grad():
        net(torch.from_numpy(x).double())
    for module, node in RELUS.items():
        a32, a64 = got[inputs[node]][1].astype(np.float64), seen[module][1]
        flips = np.argwhere(np.sign(a32) != np.sign(a64))
        print(f"{module}: {len(flips)} sign flip(s) on image 1; smallest |input| (float64) "
              f"{np.abs(a64).min():.1e}")
        for at in flips[:5]:
            at = tuple(int(i) for i in at)
            print(f"   channel, y, x = {at}: float32 ONNX Runtime {a32[at]:+.2e}, "
                  f"float64 torch {a64[at]:+.2e}")


if __name__ == "__main__":
    main()
