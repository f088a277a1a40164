"""``bincam convert-affact`` and ``bincam info``: bring in released weights, describe checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from bincam.cli.app import app, console, results


@app.command("convert-affact")
def convert_affact(weights: Path = typer.Argument(..., help="The authors' pickled KitModel (.pth)."),
                   out: Path = typer.Option(..., help="Checkpoint folder to write."),
                   attributes: str = typer.Option(None, help="Comma-separated output names "
                                                  "(default: the 40 CelebA attributes).")) -> None:
    """Convert released AFFACT weights with a restricted unpickler (no code from the file runs)."""
    from bincam.affact_import import convert_affact as convert
    from bincam.files import check_output

    check_output(out, "--out", folder=True)
    names = [a.strip() for a in attributes.split(",")] if attributes else None
    folder = convert(weights, out, names)
    console.print(f"wrote checkpoint {folder}")


@app.command("info")
def info(checkpoint: Path = typer.Argument(..., help="A checkpoint folder, or an exported "
                                          "ONNX file.")) -> None:
    """Show a checkpoint's model card (its weights are loaded and checked too), or what an
    exported ONNX file predicts, explains, takes and outputs (no torch needed)."""
    if checkpoint.suffix.lower() == ".onnx" and not checkpoint.is_dir():
        from rich.markup import escape

        from bincam.core.model_info import onnx_summary

        table = Table(show_header=False, box=None)
        for field, value in onnx_summary(checkpoint):
            table.add_row(field, escape(value))
        return results.print(table)
    from bincam.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    card = model.card
    table = Table(show_header=False, box=None)
    table.add_row("architecture", str(card.arch))
    table.add_row("attributes", f"{len(card.attributes)}: {', '.join(card.attributes[:6])}…")
    table.add_row("input", f"{card.image_size}px RGB in {list(card.pixel_range)}, "
                           f"mean {list(card.mean)}, std {list(card.std)}")
    table.add_row("weights", f"{sum(p.numel() for p in model.parameters()):,} parameters, "
                             "all finite")
    table.add_row("CAM layers", f"{', '.join(card.cam_layers)} (default {card.default_cam_layer})")
    if card.validation:
        means = card.validation.get("means", {})
        table.add_row("validation", f"epoch {card.validation.get('epoch', -1) + 1}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in means.items()))
    results.print(table)
