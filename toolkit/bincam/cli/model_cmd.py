"""``bincam convert-affact`` and ``bincam info``: bring in released weights, describe checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from bincam.cli.app import app, console, show_rows


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
        from bincam.core.model_info import onnx_summary

        return show_rows(onnx_summary(checkpoint))
    from bincam.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    weights = f"{sum(p.numel() for p in model.parameters()):,} parameters, all finite"
    show_rows(card_rows(model.card, weights))


def card_rows(card, weights: str) -> list[tuple[str, str]]:
    """``bincam info``'s rows for a validated card (every block it reads has its schema type)."""
    rows = [("architecture", str(card.arch)),
            ("attributes", f"{len(card.attributes)}: {', '.join(card.attributes[:6])}…"),
            ("input", f"{card.image_size}px RGB in {list(card.pixel_range)}, "
                      f"mean {list(card.mean)}, std {list(card.std)}"),
            ("weights", weights),
            ("CAM layers", f"{', '.join(card.cam_layers)} (default {card.default_cam_layer})")]
    if card.validation:
        epoch = card.validation.get("epoch")
        means = card.validation.get("means", {})
        rows.append(("validation", f"epoch {'?' if epoch is None else epoch + 1}: " + ", ".join(
            f"{k} {'n/a' if v != v else f'{v:.3f}'}" for k, v in means.items())))
    return rows
