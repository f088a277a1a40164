"""The form of an op that a model's opset takes, and the validity of the nodes bincam appends.

ONNX moved attributes to inputs over the opsets bincam supports (13–21): ``axes`` of ``ReduceSum``,
``Squeeze`` and ``Unsqueeze`` is an input from opset 13, of every other ``Reduce*`` from 18 only
(an attribute before); ``Split``'s sizes are an input from 13 (``num_outputs`` from 18); ``Pad``'s
pads and ``Clip``'s bounds are inputs from 11. ``axes_as_input`` says which form to emit;
``check_own_nodes`` checks every appended node against its opset's schema.
"""

from __future__ import annotations

import onnx

from bincam.core.own_graph import names_own_node
from bincam.errors import OwnGraphError

OPSETS = range(13, 22)  # the opsets every rule is tested at
_AXES_INPUT_SINCE = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13}


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)


def axes_as_input(op_type: str, opset: int) -> bool:
    """Whether ``op_type`` (a Reduce*, Squeeze or Unsqueeze) takes its axes as an input."""
    return opset >= _AXES_INPUT_SINCE.get(op_type, 18)


def check_own_nodes(nodes, model: onnx.ModelProto) -> None:
    """Each of ``nodes`` against the schema of its op at the model's opsets (inputs, outputs,
    attributes): an ``OwnGraphError`` naming the first bad node."""
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = model.ir_version or onnx.IR_VERSION
    ctx.opset_imports = {o.domain or "": o.version for o in model.opset_import}
    for node in nodes:
        try:
            onnx.checker.check_node(node, ctx)
        except onnx.checker.ValidationError as exc:
            raise OwnGraphError(f"node {node.name!r} {node.op_type} at opset "
                                f"{model_opset(model)}: {str(exc).splitlines()[0][:200]}") from None


def check_appended(source: onnx.ModelProto, extended: onnx.ModelProto) -> None:
    """The full ONNX checker on ``extended`` (``source`` plus bincam's nodes). A failure that names
    one of bincam's nodes, or that ``source`` alone does not have, is bincam's: ``OwnGraphError``.
    A failure ``source`` has too is the user's model's and left to the export checks (ONNX
    Runtime may well run it). Models past protobuf's 2 GiB limit are not checked here."""
    if extended.ByteSize() >= 2**31 - 1:
        return
    try:
        onnx.checker.check_model(extended, full_check=True)
        return
    except Exception as exc:  # noqa: BLE001 - ValidationError or an InferenceError subclass
        reason = str(exc).splitlines()[0][:240]
        own = names_own_node(reason, extended)
    if own is None:
        try:
            onnx.checker.check_model(source, full_check=True)
        except Exception:  # noqa: BLE001 - the user's model fails the same check: not ours
            return
    raise OwnGraphError(reason)
