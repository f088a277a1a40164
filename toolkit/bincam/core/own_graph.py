"""Whose fault a failed ONNX Runtime load is: the user's model, or the graph bincam appended.

bincam names every node it appends ``vjp/…`` (gradients) or ``bincam/…`` (outputs, explanations).
A load that fails on a file with such nodes is bincam's when the error names one of them, or when
the user's part of the file (the nodes not bincam's, cut at the tensors bincam's nodes read)
loads alone; otherwise the model itself is not loadable.
"""

from __future__ import annotations

from bincam.errors import BincamError, OwnGraphError

OWN_PREFIXES = ("vjp/", "bincam/")  # names of the nodes bincam appends


def names_own_node(message: str, model) -> str | None:
    """The name of a bincam-appended node that ``message`` mentions, if any."""
    return next((n.name for n in model.graph.node
                 if n.name.startswith(OWN_PREFIXES) and n.name in message), None)


def load_failure(data: bytes, exc: Exception, source: str) -> BincamError:
    """The error to raise for ONNX Runtime's failure ``exc`` to load the file ``data``."""
    import onnx

    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    users = BincamError(f"{source} is not a loadable ONNX model ({reason})")
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - not even a protobuf: the file's
        return users
    if not any(n.name.startswith(OWN_PREFIXES) for n in model.graph.node):
        return users
    if names_own_node(str(exc), model) is not None or _user_part_loads(model):
        return OwnGraphError(f"{source}: {reason}")
    return users


def _user_part_loads(model) -> bool:
    """Whether the nodes of ``model`` not appended by bincam load in ONNX Runtime alone, with the
    tensors bincam's nodes read as outputs."""
    import onnx
    import onnxruntime as ort

    own = [n for n in model.graph.node if n.name.startswith(OWN_PREFIXES)]
    kept = [n for n in model.graph.node if not n.name.startswith(OWN_PREFIXES)]
    produced = {o for n in kept for o in n.output}
    outputs = list(dict.fromkeys(i for n in own for i in n.input if i in produced))
    if not outputs:
        return False
    part = onnx.ModelProto()
    part.CopyFrom(model)
    del part.graph.node[:], part.graph.output[:]
    part.graph.node.extend(kept)
    part.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(part.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ORT raises several types for a bad graph
        return False
    return True
