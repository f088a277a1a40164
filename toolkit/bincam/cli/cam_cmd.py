"""``bincam cam``: binary CAM overlays, grid figures, predictions and raw maps for images."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import List

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bincam.cli.app import app, console
from bincam.errors import BincamError


def _expand(inputs: list[Path]) -> list[Path]:
    files = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise BincamError(f"input {path} does not exist")
    if not files:
        raise BincamError("no input files found")
    return files


@app.command("cam")
def cam(checkpoint: Path = typer.Argument(..., help="Checkpoint folder."),
        inputs: List[Path] = typer.Argument(..., help="Images and/or folders of images."),
        out: Path = typer.Option(..., help="Output folder."),
        method: str = typer.Option("gradcam", help="gradcam, hirescam, gradcam-elementwise, "
                                   "xgradcam, gradcam++ or layercam"),
        mode: str = typer.Option("predicted", help="predicted (|z|), positive (z), negative (−z)"),
        attributes: str = typer.Option("all", help="Comma-separated names or indices."),
        layer: str = typer.Option(None, help="CAM layer (default: the net's final tap)."),
        size: int = typer.Option(224, help="Side of overlays and grids in pixels."),
        batch_size: int = typer.Option(16),
        on_error: str = typer.Option("skip", help="skip or fail on unreadable inputs.")) -> None:
    """Explain every selected attribute of each image for its predicted class."""
    import numpy as np

    from bincam.attributes import resolve_attributes
    from bincam.checkpoint import load_checkpoint
    from bincam.data.celeba import load_aligned
    from bincam.explanation import explain, model_attributes
    from bincam.overlay import grid_figure, overlay, png_bytes, write_atomic

    if on_error not in ("skip", "fail"):
        raise BincamError(f"--on-error must be skip or fail, got {on_error!r}")
    model = load_checkpoint(checkpoint)
    names = resolve_attributes(attributes, model_attributes(model))
    files = _expand(inputs)
    readable, batches = [], []
    for path in files:  # decode everything first: a failing input must stop before any output
        try:
            batches.append((load_aligned(path, model.card.image_size), load_aligned(path, size)))
            readable.append(path)
        except BincamError as exc:
            if on_error == "fail":
                raise BincamError(f"{exc} (--on-error fail: nothing written)") from None
            console.print(f"[yellow]skipped[/] {exc}", highlight=False)
    if not readable:
        raise BincamError("no input could be read; nothing written")
    records, raws, logits_all, pes = [], [], [], []
    with Progress(TextColumn("explaining"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("cam", total=len(readable))
        for start in range(0, len(readable), batch_size):
            kept = readable[start:start + batch_size]
            batch = [b[0] for b in batches[start:start + batch_size]]
            shown = [b[1] for b in batches[start:start + batch_size]]
            x = np.stack(batch).transpose(0, 3, 1, 2)
            result = explain(model, x, method=method, mode=mode, attributes=names, layer=layer)
            maps = result.heatmaps(size).numpy()
            pe = result.proportional_energy()
            probs = result.probabilities.numpy()
            for i, path in enumerate(kept):
                stem = path.stem
                pictures, titles = [], []
                for k, attr in enumerate(names):
                    picture = overlay(shown[i], maps[i, k])
                    write_atomic(out / "overlays" / stem / f"{attr}.png", png_bytes(picture))
                    pictures.append(picture)
                    cls = "pos" if probs[i, k] >= 0.5 else "neg"
                    titles.append(f"{attr}\n{cls} p={probs[i, k]:.2f}")
                write_atomic(out / "grids" / f"{stem}.png", grid_figure(shown[i], pictures, titles))
                records.append({"file": str(path), "logits": result.logits[i].tolist(),
                                "probabilities": probs[i].tolist(),
                                "predicted": [int(v) for v in (probs[i] >= 0.5)],
                                "proportional_energy": pe[i].tolist()})
                bar.advance(task)
            raws.append(result.raw.float().numpy())
            logits_all.append(result.logits.numpy())
            pes.append(pe)
    summary = {"checkpoint": str(checkpoint), "method": method, "mode": mode,
               "layer": layer or model.default_cam_layer, "attributes": names, "images": records}
    write_atomic(out / "predictions.json", json.dumps(summary, indent=2).encode())
    buf = io.BytesIO()
    np.savez_compressed(buf, files=np.array([str(p) for p in readable]), attributes=np.array(names),
                        logits=np.concatenate(logits_all), raw=np.concatenate(raws),
                        proportional_energy=np.concatenate(pes), method=method, mode=mode)
    write_atomic(out / "cams.npz", buf.getvalue())
    console.print(f"explained {len(records)} image(s) × {len(names)} attribute(s) → {out}")
