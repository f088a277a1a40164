"""``bincam export``: one ONNX file with logits, activations and gradients, checked."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from bincam.cli.app import app, console
from bincam.errors import BincamError


@app.command("export")
def export(checkpoint: Path = typer.Argument(None, help="Checkpoint folder (or use --onnx)."),
           out: Path = typer.Option(..., help="ONNX file to write."),
           layer: str = typer.Option(None, help="CAM layer (default: the net's final tap)."),
           gradients: str = typer.Option("auto", help="auto, dense or factored"),
           onnx_model: Path = typer.Option(None, "--onnx", help="Any ONNX classifier instead."),
           activation: str = typer.Option(None, help="With --onnx: the activation tensor."),
           logits: str = typer.Option(None, help="With --onnx: the logits tensor."),
           attributes: str = typer.Option(None, help="With --onnx: comma-separated logit names."),
           precision: str = typer.Option("fp32", help="fp32, or fp16: a mixed-precision graph "
                                         "(Gemm/MatMul kept in float32) for strongly typed "
                                         "TensorRT; checked with ONNX Runtime here."),
           checks: bool = typer.Option(True, help="Run checker, shape inference, TensorRT lint, "
                                       "parity and input-dependence checks.")) -> None:
    """Append the gradient subgraph and write a self-describing ONNX model."""
    from bincam.export.checks import run_checks
    from bincam.export.model import export_checkpoint, export_onnx_classifier, save_onnx
    from bincam.export.precision import PRECISIONS, reduce_precision

    if precision not in PRECISIONS and precision != "bf16":
        raise BincamError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    torch_model = None
    if onnx_model is not None:
        if checkpoint is not None or not activation or not logits:
            raise BincamError("--onnx needs --activation and --logits, and no checkpoint")
        names = [a.strip() for a in attributes.split(",")] if attributes else None
        model = export_onnx_classifier(onnx_model, activation, logits, names)
    else:
        if checkpoint is None:
            raise BincamError("give a checkpoint folder, or --onnx MODEL with --activation and "
                              "--logits")
        from bincam.checkpoint import load_checkpoint

        torch_model = load_checkpoint(checkpoint)
        model = export_checkpoint(torch_model, layer, gradients)
    model = reduce_precision(model, precision)
    if checks:
        results = run_checks(model, torch_model)
        table = Table("check", "result", "detail", title="export checks")
        for c in results:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", c.detail)
        console.print(table)
        failed = [c.name for c in results if not c.ok]
        if failed:
            raise BincamError(f"export checks failed: {', '.join(failed)}; nothing written")
    save_onnx(model, out)
    console.print(f"wrote {out}")


@app.command("build")
def build(model: Path = typer.Argument(..., help="An ONNX file written by bincam export."),
          max_batch: int = typer.Option(32, help="Largest batch of the optimisation profile."),
          opt_batch: int = typer.Option(8, help="Batch size TensorRT tunes for.")) -> None:
    """Build (or find in the cache) the TensorRT plan of an exported model for this GPU."""
    from bincam.runtime.trt_engine import TrtEngine

    engine = TrtEngine(model, max_batch=max_batch, opt_batch=opt_batch)
    k = engine.key
    console.print(f"TensorRT {k['tensorrt']} plan for {k['gpu']} (sm {k['compute_capability']}), "
                  f"{k['precision']}, batch {k['profile'][0]}..{k['profile'][2]}: key {k['key']}")
