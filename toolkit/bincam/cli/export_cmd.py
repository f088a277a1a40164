"""``bincam export``: one ONNX file with logits, activations and gradients, checked."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from bincam.cli.app import app, console
from bincam.errors import BincamError


@app.command("export")
def export(checkpoint: Path = typer.Argument(None, help="Checkpoint folder (or use --onnx)."),
           out: Path = typer.Option(None, help="ONNX file to write (required unless "
                                    "--list-activations)."),
           layer: str = typer.Option(None, help="CAM layer (default: the net's final tap)."),
           gradients: str = typer.Option("auto", help="auto, dense or factored"),
           onnx_model: Path = typer.Option(None, "--onnx", help="Any ONNX classifier instead."),
           torch_factory: str = typer.Option(None, "--torch", help="A torch classifier of your "
                                             "own instead: 'package.module:factory' (called "
                                             "with no arguments; imported from the current "
                                             "folder too), with --layer (its dotted name)."),
           activation: str = typer.Option(None, help="With --onnx: the activation tensor."),
           logits: str = typer.Option(None, help="With --onnx: the logits tensor."),
           attributes: str = typer.Option(None, help="With --onnx: comma-separated logit names."),
           tokens: str = typer.Option("none", help="With --onnx: none, or vit / swin when the "
                                      "activation is a transformer's tokens [B, P+h·w, C] "
                                      "(P: class/distillation/register tokens) / "
                                      "[B, h, w, C] (mapped to [B, C, h, w] in the graph)."),
           head: str = typer.Option("auto", help="With --onnx: auto (a Softmax/Sigmoid after "
                                    "the logits decides; none: sigmoid), sigmoid (K independent "
                                    "binary logits) or softmax (2 classes: one decision, the "
                                    "positive class, logit z_pos − z_neg; C > 2: one decision "
                                    "per class, d_c = z_c − logsumexp of the others)."),
           positive_class: str = typer.Option(None, help="With a 2-way softmax head: the "
                                              "positive class, 0, 1 or its name (default 1)."),
           target: str = typer.Option("log-odds", help="With a softmax head: what the maps "
                                      "explain, log-odds (each decision's binary logit d) or "
                                      "logit (the class logit z_c, as pytorch-grad-cam); the "
                                      "file's logits stay d, its probabilities the softmax."),
           precision: str = typer.Option("fp32", help="fp32, or fp16: a mixed-precision graph "
                                         "(Gemm/MatMul kept in float32) for strongly typed "
                                         "TensorRT; checked with ONNX Runtime here."),
           half_outputs: bool = typer.Option(False, help="With --precision fp16: activations "
                                             "and dense gradients stay float16 outputs (no "
                                             "cast back to float32: half the bytes an engine "
                                             "writes and the fused CUDA epilogue reads)."),
           checks: bool = typer.Option(True, help="Run checker, shape inference, TensorRT lint, "
                                       "self-checks, parity and input-dependence checks."),
           runtime: str = typer.Option("ort", help="The runtime the file is for: ort (ONNX "
                                      "Runtime; TensorRT lint findings are warnings), trt "
                                      "(TensorRT) or any (both): then a lint finding refuses "
                                      "the export."),
           list_activations: bool = typer.Option(False, help="With --onnx: list candidate CAM "
                                                 "tensors (with their --tokens) and stop."),
           explain: bool = typer.Option(False, "--explain", help="Write an explaining file: its "
                                        "outputs are logits, heatmaps and energy (PE), computed "
                                        "in the graph; see the options below."),
           method: str = typer.Option("gradcam", help="With --explain: gradcam, hirescam, "
                                      "gradcam-elementwise, xgradcam, gradcam++ or layercam."),
           mode: str = typer.Option("predicted", help="With --explain: predicted (|z|), "
                                    "positive (z) or negative (−z)."),
           explain_attributes: str = typer.Option("all", help="With --explain: the attributes "
                                                  "to explain (names or indices), K of them."),
           map_size: int = typer.Option(None, help="With --explain: side of the heatmaps "
                                        "(default: the input size)."),
           map_dtype: str = typer.Option("float32", help="With --explain: float32, float16 or "
                                         "uint8 (0..255) heatmaps."),
           raw_maps: bool = typer.Option(False, help="With --explain: also output the h×w "
                                         "weighted sums (raw_maps)."),
           masks: Path = typer.Option(None, help="With --explain: masks for PE, an .npz with an "
                                      "array per attribute name or a folder of NAME.png / "
                                      "NAME.npy (a checkpoint's CelebA attributes have masks "
                                      "already)."),
           cam_precision: str = typer.Option("float32", help="With --explain: float32 (runs "
                                             "everywhere, TensorRT too) or float64 (the CAM "
                                             "method as exact as bincam's core; ONNX Runtime "
                                             "only)."),
           triton_repo: Path = typer.Option(None, help="Also write a Triton model repository "
                                            "here (Python-backend model; with --explain also "
                                            "the stock onnxruntime and tensorrt backends)."),
           preprocess: str = typer.Option(None, help="With --onnx/--torch: the model's "
                                          "preprocessing from a Hugging Face "
                                          "preprocessor_config.json, timm:NAME or "
                                          "torchvision:WEIGHTS (options below override it)."),
           pixel_range: str = typer.Option(None, help="With --onnx/--torch: the input's pixel "
                                           "range, 1 (0-1, default) or 255 (0-255)."),
           mean: str = typer.Option(None, help="With --onnx/--torch: per-channel mean "
                                    "subtracted, a,b,c in the model's channel order (default "
                                    "0,0,0)."),
           std: str = typer.Option(None, help="With --onnx/--torch: per-channel std divided by, "
                                   "a,b,c (positive; default 1,1,1)."),
           channel_order: str = typer.Option(None, help="With --onnx/--torch: rgb (default) or "
                                             "bgr."),
           layout: str = typer.Option(None, help="With --onnx: nchw (default) or nhwc."),
           size: str = typer.Option(None, help="With --onnx: the input side N (or NxN) where the "
                                    "file's is dynamic; with --torch: the side it is exported "
                                    "at (default: timm's, else 224)."),
           fit: str = typer.Option(None, help="How images of any size enter the square input: "
                                   "stretch, crop or pad (default: celeba, or the --preprocess "
                                   "source's)."),
           raw_pixels: bool = typer.Option(False, "--raw-pixels", help="The file takes uint8 "
                                           "[N, S, S, 3] RGB pixels and normalises them inside "
                                           "the graph (for Triton clients and browsers).")
           ) -> None:
    """Append the gradient subgraph (or, with --explain, the whole CAM pipeline) and write a
    self-describing ONNX model."""
    from bincam.export.checks import check_target, run_checks
    from bincam.export.model import export_checkpoint, export_onnx_classifier, save_onnx
    from bincam.export.precision import PRECISIONS, reduce_precision

    check_target(runtime)
    if explain and cam_precision == "float64" and runtime != "ort":
        raise BincamError("--cam-precision float64 files are for ONNX Runtime (TensorRT has no "
                          "float64): use --runtime ort, or --cam-precision float32")
    if precision not in PRECISIONS and precision != "bf16":
        raise BincamError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if half_outputs and (precision != "fp16" or explain):
        raise BincamError("--half-outputs needs --precision fp16 and a gradient file (not "
                          "--explain, whose outputs are already the maps)")

    torch_model = None
    if not list_activations:
        from bincam.files import check_output

        if out is None:
            raise BincamError("--out is missing: give the ONNX file to write (--out MODEL.onnx)")
        check_output(out, "--out", folder=False)
    if triton_repo is not None:
        from bincam.serve.repository import parse_config

        if triton_repo.exists() and (not triton_repo.is_dir() or any(triton_repo.iterdir())):
            raise BincamError(f"--triton-repo {triton_repo} is a file or not empty; give a new "
                              "or empty folder")
        parse_config('name: "probe"', "a probe config")  # tritonclient present, before work
    if onnx_model is not None and not onnx_model.is_file():
        raise BincamError(f"--onnx {onnx_model} does not exist")
    if torch_factory is not None:
        _check_torch_options(checkpoint, onnx_model, activation, logits, layer,
                             list_activations, explain)
    if list_activations:
        return _list_activations(onnx_model, logits)
    if onnx_model is not None and (checkpoint is not None or not activation or not logits):
        raise BincamError("--onnx needs --activation and --logits, and no checkpoint")
    if onnx_model is None and checkpoint is None and torch_factory is None:
        raise BincamError("give a checkpoint folder, or --onnx MODEL with --activation and "
                          "--logits")
    given = [f"--{n.replace('_', '-')}" for n, v, default in (
        ("method", method, "gradcam"), ("mode", mode, "predicted"),
        ("explain_attributes", explain_attributes, "all"), ("map_size", map_size, None),
        ("map_dtype", map_dtype, "float32"), ("raw_maps", raw_maps, False),
        ("masks", masks, None), ("cam_precision", cam_precision, "float32")) if v != default]
    if given and not explain:
        raise BincamError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} "
                          "with --explain")
    if onnx_model is not None and layer is not None:
        raise BincamError("--layer is for checkpoints; with --onnx name the tensor with "
                          "--activation")
    declared = _declared_input(onnx_model is not None or torch_factory is not None, preprocess,
                               pixel_range, mean, std, channel_order, layout, size, fit,
                               raw_pixels)
    if torch_factory is not None:
        from bincam.export.torch_module import check_torch_preprocessing

        check_torch_preprocessing(declared.preprocessing)
    head_note = ""
    if onnx_model is not None:  # the head and its decisions, checked before any work
        from bincam.export.model import classifier_decisions

        head_note = "; " + classifier_decisions(onnx_model, logits, _names(attributes), head,
                                                positive_class, target, activation)[0].note
        head_note += "; maps of the class logits z_c" if target == "logit" else ""
    elif head != "auto" or positive_class is not None or target != "log-odds":
        raise BincamError("--head, --positive-class and --target are for --onnx classifiers "
                          "(a checkpoint's logits are sigmoid logits)")
    if explain:
        from bincam.export.explain_graph import ExplainSpec

        spec = ExplainSpec(method, mode, map_size, map_dtype, raw_maps, cam_precision).check()
        _export_explaining(spec, checkpoint, onnx_model, out, explain_attributes, masks,
                           precision, checks, declared, head_note, runtime, layer=layer,
                           gradients=gradients,
                           activation=activation, logits=logits,
                           attributes=_names(attributes), tokens=tokens, head=head,
                           positive_class=positive_class, target=target)
        return _triton_repository(triton_repo, out, stock=True)
    if torch_factory is not None:
        from bincam.export.torch_module import load_factory, torch_gradient_graph

        model, torch_model = torch_gradient_graph(
            load_factory(torch_factory), declared.size, layer, gradients,
            names=_names(attributes), tokens=None if tokens == "none" else tokens)
    elif onnx_model is not None:
        model = export_onnx_classifier(onnx_model, activation, logits, _names(attributes),
                                       gradients, tokens, head=head,
                                       positive_class=positive_class, target=target,
                                       **declared.input_options())
    else:
        from bincam.checkpoint import load_checkpoint

        torch_model = load_checkpoint(checkpoint)
        model = _with_fit(export_checkpoint(torch_model, layer, gradients), fit)
    model = reduce_precision(model, precision, half_outputs=half_outputs)
    if checks:  # a --torch net's checks run on its own input tensor: preprocessing after
        _report_checks(run_checks(model, torch_model, runtime))
    if torch_factory is not None:
        from bincam.export.torch_module import with_preprocessing

        model = with_preprocessing(model, declared.preprocessing, declared.fit)
    model = _raw_pixels(model, raw_pixels, checks)
    save_onnx(model, out)
    note = layout_note(model) + head_note
    if half_outputs:  # an output computed in float32 inside the graph stays float32: say so
        from onnx import TensorProto

        half = [o.name for o in model.graph.output
                if o.type.tensor_type.elem_type == TensorProto.FLOAT16]
        note += f"; float16 outputs: {', '.join(half) or 'none (computed in float32 here)'}"
    console.print(f"wrote {out}: {note}", markup=False, highlight=False, soft_wrap=True)
    _triton_repository(triton_repo, out, stock=False)


def _check_torch_options(checkpoint, onnx_model, activation, logits, layer, list_activations,
                         explain) -> None:
    """``--torch``: the options that cannot go with it, refused before anything is loaded."""
    if checkpoint is not None or onnx_model is not None:
        raise BincamError("--torch exports a torch model of your own: give no checkpoint and no "
                          "--onnx with it")
    if activation or logits or list_activations:
        raise BincamError("--activation, --logits and --list-activations are for --onnx; with "
                          "--torch name the CAM layer with --layer")
    if not layer:
        raise BincamError("--torch needs --layer: the dotted name of the CAM layer in your "
                          "model (e.g. layer4)")
    if explain:
        raise BincamError("--explain does not take --torch yet: export the gradient file with "
                          "--torch, then use it")


def layout_note(model) -> str:
    """Which gradient layout the file carries (the choice ``--gradients auto`` made), in words."""
    from bincam.core.model_info import onnx_info

    info = onnx_info(model, "the exported model")
    if info.gradient_layout == "factored":
        return (f"factored gradients (channel_weights [K, C]: the head after {info.target_layer} "
                "is affine)")
    return f"dense gradients (gradients [B, K, C, h, w] of {info.target_layer})"


def _triton_repository(folder: Path | None, model: Path, stock: bool) -> None:
    """``--triton-repo``: the model repository of the file just written (configs validated)."""
    if folder is None:
        return
    from bincam.serve.repository import ServeOptions, write_repository

    written = write_repository(folder, model.read_bytes(), ServeOptions(), stock=stock)
    console.print(f"wrote the Triton model repository {folder}: "
                  f"{', '.join(p.name for p in written)} (configs checked against the file)")


def _names(attributes: str | None) -> list[str] | None:
    return [a.strip() for a in attributes.split(",")] if attributes else None


def _report_checks(results, title: str = "export checks") -> None:
    """Print the checks as a table; any failure stops the export before anything is written."""
    table = Table("check", "result", "detail", title=title)
    for c in results:
        table.add_row(c.name, "[yellow]warning[/]" if c.warning else "[green]ok[/]" if c.ok
                      else "[red]FAILED[/]", c.detail)
    console.print(table)
    for c in results:
        if c.warning:
            console.print(f"warning: {c.name}: {c.detail}", markup=False, highlight=False,
                          soft_wrap=True)
    failed = [c.name + (f" ({c.advice})" if c.advice else "") for c in results if not c.ok]
    if failed:
        raise BincamError(f"export checks failed: {'; '.join(failed)}; nothing written")


def _export_explaining(spec, checkpoint: Path | None, onnx_model: Path | None, out: Path,
                       select: str, masks: Path | None, precision: str, checks: bool,
                       declared, head_note: str = "", runtime: str = "ort", **options) -> None:
    from bincam.core.model_info import onnx_info
    from bincam.export.checks import Check, run_checks, structural_checks
    from bincam.export.explain_checks import explain_checks
    from bincam.export.explaining import export_explaining
    from bincam.export.model import save_onnx

    torch_model = None
    if checkpoint is not None:
        from bincam.checkpoint import load_checkpoint

        torch_model = load_checkpoint(checkpoint)
        options = {k: options[k] for k in ("layer", "gradients")}
    else:
        options.pop("layer")
        options.update(declared.input_options())
    made = export_explaining(spec, torch_model, onnx_model, select, masks, precision, **options)
    if checkpoint is not None:
        made.model = _with_fit(made.model, declared.fit)
    if checks:
        _report_checks(run_checks(made.gradient, torch_model, runtime),
                       "export checks: gradient graph")
        structure = structural_checks(made.model, runtime)
        if spec.cam_precision == "float64":  # the gradient graph's lint above still holds
            structure = [Check(c.name, True, "not for TensorRT (no float64): --cam-precision "
                               "float64 files are for ONNX Runtime") if "TensorRT" in c.name
                         else c for c in structure]
        _report_checks(structure + explain_checks(made.model, made.masks),
                       "export checks: explaining file")
    made.model = _raw_pixels(made.model, declared.preprocessing.raw_pixels, checks)
    save_onnx(made.model, out)
    explain = onnx_info(made.model, str(out)).explain
    console.print(f"wrote {out}: outputs {', '.join(o.name for o in made.model.graph.output)} — "
                  f"{spec.method}, mode {spec.mode}, {len(explain['mask_fraction'])} attribute(s), "
                  f"{spec.map_dtype} maps {explain['map_size'][0]}² (metadata: bincam.explain); "
                  f"from {layout_note(made.gradient)}{head_note}", markup=False,
                  highlight=False)


def _declared_input(foreign: bool, preprocess, pixel_range, mean, std, channel_order, layout,
                    size, fit, raw_pixels):
    """The input options, checked before any work; a checkpoint's input is its card's
    (``foreign``: an --onnx or --torch model, whose preprocessing is declared)."""
    from bincam.export.preprocess_sources import declared_input

    given = [f"--{n.replace('_', '-')}" for n, v in (
        ("preprocess", preprocess), ("pixel_range", pixel_range), ("mean", mean), ("std", std),
        ("channel_order", channel_order), ("layout", layout), ("size", size)) if v is not None]
    if given and not foreign:
        raise BincamError(f"{', '.join(given)}: a checkpoint's input is its card's (RGB NCHW "
                          "pixels in [0, 1], its own size); these options describe --onnx and "
                          "--torch models (--fit and --raw-pixels apply to all)")
    declared = declared_input(preprocess, pixel_range, mean, std, channel_order, layout, size,
                              fit, raw_pixels)
    if not foreign:
        declared.fit = fit  # None: the card's rule, as export_checkpoint records it
    for note in declared.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    return declared


def _with_fit(model, fit: str | None):
    """A checkpoint's file with ``--fit`` recorded instead of its card's rule."""
    if fit is None:
        return model
    from bincam.core.model_info import onnx_info, write_metadata

    info = onnx_info(model, "the exported model")
    info.input_fit = fit
    write_metadata(model, info)
    return model


def _raw_pixels(model, raw_pixels: bool, checks: bool):
    """``--raw-pixels``: the uint8-pixel input prepended (after the checks of the float graph),
    and checked against that graph on ``core.preprocess``'s input."""
    if not raw_pixels:
        return model
    from bincam.export.checks import Check
    from bincam.export.input_spec import raw_pixel_input, raw_pixel_parity

    raw = raw_pixel_input(model)
    if checks:
        error = raw_pixel_parity(raw, model)
        _report_checks([Check("raw pixels: logits vs the float input", error <= 1e-5,
                              f"{error:.2e} relative (limit 1e-05)")], "export checks: input")
    return raw


def _list_activations(onnx_model: Path | None, logits: str | None) -> None:
    from bincam.core.model_info import load_onnx
    from bincam.export.candidates import cam_candidates

    if onnx_model is None:
        raise BincamError("--list-activations needs --onnx MODEL")
    proto, _, _ = load_onnx(onnx_model)
    logits = logits or proto.graph.output[0].name
    table = Table("shape", "--tokens", "note", title=f"CAM tensors → {logits}, latest first")
    table.add_column("--activation", overflow="fold")
    for c in cam_candidates(proto, logits):
        table.add_row(str(c["shape"]), c["tokens"], c["note"], c["tensor"])
    console.print(table)


@app.command("build")
def build(model: Path = typer.Argument(..., help="An ONNX file written by bincam export."),
          max_batch: int = typer.Option(32, help="Largest batch of the optimisation profile."),
          opt_batch: int = typer.Option(8, help="Batch size TensorRT tunes for.")) -> None:
    """Build (or find in the cache) the TensorRT plan of an exported model for this GPU."""
    from bincam.core.model_info import load_onnx, onnx_info
    from bincam.runtime.trt_plan import cached_plan

    if not 1 <= opt_batch <= max_batch:
        raise BincamError(f"need 1 ≤ --opt-batch ≤ --max-batch, got {opt_batch} and {max_batch}")
    proto, data, source = load_onnx(model)
    _, k = cached_plan(data, onnx_info(proto, source).precision, (1, opt_batch, max_batch))
    console.print(f"TensorRT {k['tensorrt']} plan for {k['gpu']} (sm {k['compute_capability']}), "
                  f"{k['precision']}, batch {k['profile'][0]}..{k['profile'][2]}: key {k['key']}")
