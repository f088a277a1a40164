"""The mid-network tensor of `conformance_timm.py`: the output of the middle entry of timm's
``feature_info`` (a stage or a block), found in the ONNX graph of torch's legacy exporter by its
scope names and checked by value against the torch module (``torch_site``), so that the
reference finds the same tensor in torch.

The legacy exporter names a node ``/<scope>/<scope>/…/<Op>``: one scope per module *called*
(``module(x)``; a ModuleList iterated or a Sequential's ``forward`` called directly adds none),
each named by the module's qualified name from its last non-numeric atom on (``stages.1.1`` →
``stages.1.1``, ``blocks.2.stack.act3`` → ``act3``, ``features.denseblock2`` → ``denseblock2``);
a scope seen again (a module called twice) gets ``_1``, ``_2``, … appended. The scopes here come
from a forward pass with hooks that keep the stack of called modules, so they are the exporter's
own, whatever the call structure."""

from __future__ import annotations

import re

import numpy as np

from conformance_models import _ancestors, tensor_values, torch_site

MAX_CANDIDATES = 64  # tensors checked by value before giving up on verified ones


def unqualified(name: str) -> str:
    """The exporter's scope name of the module ``name``: from its last non-numeric atom on."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


def call_scopes(torch_model, x) -> tuple[dict[str, set[str]], list[str], dict[str, int]]:
    """``(scopes, finished, calls)`` of one forward pass on ``x``: each called module's scope
    strings (``/stages/stages.1``), the module names in the order their calls finished, and how
    often each was called."""
    import torch

    scopes, finished, calls, stack, handles = {}, [], {}, [], []

    def pre(name):
        def hook(_module, _inputs):
            stack.append(name)
            scopes.setdefault(name, set()).add("/" + "/".join(unqualified(n) for n in stack))
        return hook

    def post(name):
        def hook(_module, _inputs, _output):
            if stack and stack[-1] == name:
                stack.pop()
            calls[name] = calls.get(name, 0) + 1
            finished.append(name)
        return hook

    for name, module in torch_model.named_modules():
        if name:
            handles += [module.register_forward_pre_hook(pre(name)),
                        module.register_forward_hook(post(name))]
    try:
        with torch.no_grad():
            torch_model(x)
    finally:
        for h in handles:
            h.remove()
    return scopes, finished, calls


def node_scope(node_name: str, known: set[str]) -> str | None:
    """The module scope a node belongs to: its name less the op, less a ``_N`` a repeated call
    added; None for a node outside every module (``/Concat``, ``Identity_3``)."""
    scope = node_name.rsplit("/", 1)[0] if "/" in node_name else ""
    while scope:
        if scope in known:
            return scope
        stripped = re.sub(r"_\d+$", "", scope)
        if stripped != scope and stripped in known:
            return stripped
        scope = scope.rsplit("/", 1)[0]  # an unknown inner scope: its parent's
    return None


def module_scopes(name: str, scopes: dict[str, set[str]]) -> set[str]:
    """The scopes of module ``name``: its own where it was called, else those of its topmost
    called descendants (a ModuleList iterated: its blocks together)."""
    if name in scopes:
        return scopes[name]
    inner = [n for n in scopes if n.startswith(name + ".")]
    top = [n for n in inner if not any(n.startswith(m + ".") for m in inner)]
    return {s for n in top for s in scopes[n]}


def leaving(nodes, owner: list, mine: set[str]) -> list[str]:
    """The tensors made by a node inside the scopes ``mine`` and used by a node outside them,
    in graph order. ``owner[i]``: the scope of ``nodes[i]``."""
    def inside(scope):
        return scope is not None and any(scope == s or scope.startswith(s + "/") for s in mine)

    flags = [inside(o) for o in owner]
    used_outside = {i for n, f in zip(nodes, flags) if not f for i in n.input}
    return [o for n, f in zip(nodes, flags) if f for o in n.output if o in used_outside]


def fallback_modules(torch_model) -> list[str]:
    """When no ``feature_info`` module exists (twins names ``block.k`` for ``blocks.k``): the
    children of the model's largest top-level ModuleList or Sequential (by parameters)."""
    from torch import nn

    best, size = None, -1
    for name, child in torch_model.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) > 1:
            n = sum(p.numel() for p in child.parameters())
            if n > size:
                best, size = name, n
    if best is None:
        return []
    return [f"{best}.{k}" for k in range(len(getattr(torch_model, best)))]


def has_positions(shape) -> bool:
    """More than one spatial position or token: ``[B, N, C]`` with N > 1, ``[B, C, h, w]``
    with h·w > 1 (a class token alone or a pooled vector is no CAM tensor)."""
    dims = list(shape)[1:]
    return (len(dims) == 2 and dims[0] > 1) or (len(dims) == 3 and dims[1] * dims[2] > 1)




def harness_input(size: int) -> np.ndarray:
    """The images ``conformance_timm.tensor_row`` compares on: 2 random and 1 flat gray."""
    rng = np.random.default_rng(0)
    return np.concatenate([rng.random((2, 3, size, size), dtype=np.float32),
                           np.full((1, 3, size, size), 0.5, np.float32)])


def mid_tensor(model_onnx, torch_model, usual: str | None) -> str:
    """A mid-network tensor (never ``usual``). Candidates: for the middle ``feature_info``
    module, then the earlier ones, then the later ones (a late one may carry no gradient: ViT),
    the tensors leaving its scopes (last first), then those leaving the scopes of its topmost
    called descendants and of theirs (last finished first: where the module returns a list, or
    values made by its own ops, as CrossViT's branches, HRNet's stages); after them the blocks
    of the model's largest block sequence (``fallback_modules``: they stand in where
    ``feature_info`` names no module; the entries it names that do not exist are skipped). The
    first candidate with more than one position whose values equal a unique torch module's
    output (or its input, used once) — what ``torch_site`` finds again; failing that, the first
    candidate (unverified). Raises LookupError."""
    import torch

    info = getattr(torch_model, "feature_info", None) or []
    modules = [f["module"] for f in info if f.get("module")]
    named = dict(torch_model.named_modules())
    fallback = fallback_modules(torch_model)
    if not any(m in named for m in modules):
        modules, fallback = fallback, []
    if not modules:
        raise LookupError("the model has no feature_info module and no block sequence")

    def middle_out(names):
        half = len(names) // 2
        return names[half:half + 1] + names[:half][::-1] + names[half + 1:]

    order = [m for m in dict.fromkeys(middle_out(modules) + middle_out(fallback)) if m in named]

    size = model_onnx.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    x = harness_input(size)
    scopes, finished, _ = call_scopes(torch_model, torch.from_numpy(x))
    known = {s for ss in scopes.values() for s in ss}
    graph = model_onnx.graph
    nodes = _ancestors(graph, graph.output[0].name)
    owner = [node_scope(n.name, known) for n in nodes]
    last_finish = {n: i for i, n in enumerate(finished)}

    def called_children(name):  # topmost called descendants, last finished first
        inner = [n for n in scopes if n.startswith(name + ".")]
        top = [n for n in inner if not any(n.startswith(m + ".") for m in inner)]
        return sorted(top, key=last_finish.get, reverse=True)

    candidates = []
    for module in order:
        children = called_children(module)
        grandchildren = [g for c in children for g in called_children(c)]
        groups = [module_scopes(module, scopes)] + [scopes[n] for n in children + grandchildren]
        for mine in groups:
            for tensor in leaving(nodes, owner, mine)[::-1]:
                if tensor != usual and tensor not in candidates:
                    candidates.append(tensor)
    if not candidates:
        raise LookupError(f"no ONNX tensor leaves the scope of {order[0]!r} or of any other "
                          "feature_info module")
    checked = candidates[:MAX_CANDIDATES]
    values = tensor_values(model_onnx, checked, x)
    consumers = {t: sum(t in n.input for n in graph.node) for t in checked}
    for tensor in checked:
        value = values[tensor]
        if value.dtype != np.float32 or not has_positions(value.shape):
            continue
        site = torch_site(torch_model, torch.from_numpy(x), value)
        if site is not None and (site[1] == "output" or consumers[tensor] == 1):
            return tensor
    return candidates[0]
