"""``bincam cam``: binary CAM overlays, grid figures, predictions and raw maps for images."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import List

import numpy as np
import typer
from rich.markup import escape
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


def _read_all(files: list[Path], model_size: int, size: int, on_error: str):
    """Decode every input first (model input and display copy), so a failure stops before output."""
    from bincam.data.celeba import load_aligned

    readable, pixels = [], []
    for path in files:
        try:
            pixels.append((load_aligned(path, model_size), load_aligned(path, size)))
            readable.append(path)
        except BincamError as exc:
            if on_error == "fail":
                raise BincamError(f"{exc} (--on-error fail: nothing written)") from None
            console.print(f"[yellow]skipped[/] {escape(str(exc))}", highlight=False)
    if not readable:
        raise BincamError("no input could be read; nothing written")
    return readable, pixels


def _write_pictures(out: Path, stem: str, shown: np.ndarray, maps: np.ndarray, names: list[str],
                    probs: np.ndarray) -> None:
    """One overlay per attribute and the image's grid figure."""
    from bincam.overlay import grid_figure, overlay, png_bytes, write_atomic

    pictures, titles = [], []
    for k, attr in enumerate(names):
        picture = overlay(shown, maps[k])
        write_atomic(out / "overlays" / stem / f"{attr}.png", png_bytes(picture))
        pictures.append(picture)
        titles.append(f"{attr}\n{'pos' if probs[k] >= 0.5 else 'neg'} p={probs[k]:.2f}")
    write_atomic(out / "grids" / f"{stem}.png", grid_figure(shown, pictures, titles))


@app.command("cam")
def cam(checkpoint: Path = typer.Argument(..., help="Checkpoint folder, or an exported ONNX "
                                         "file with --engine ort."),
        inputs: List[Path] = typer.Argument(..., help="Images and/or folders of images."),
        out: Path = typer.Option(..., help="Output folder."),
        method: str = typer.Option("gradcam", help="gradcam, hirescam, gradcam-elementwise, "
                                   "xgradcam, gradcam++ or layercam"),
        mode: str = typer.Option("predicted", help="predicted (|z|), positive (z), negative (−z)"),
        attributes: str = typer.Option("all", help="Comma-separated names or indices."),
        layer: str = typer.Option(None, help="CAM layer (default: the net's final tap)."),
        size: int = typer.Option(224, help="Side of overlays and grids in pixels."),
        batch_size: int = typer.Option(16),
        engine: str = typer.Option("torch", help="torch (checkpoint), or ort / trt (exported "
                                   "ONNX; trt needs TensorRT and an NVIDIA GPU)."),
        on_error: str = typer.Option("skip", help="skip or fail on unreadable inputs.")) -> None:
    """Explain every selected attribute of each image for its predicted class."""
    from bincam.attributes import resolve_attributes
    from bincam.cam.methods import method as check_method
    from bincam.cam.modes import MODES
    from bincam.overlay import write_atomic

    if on_error not in ("skip", "fail"):
        raise BincamError(f"--on-error must be skip or fail, got {on_error!r}")
    check_method(method)
    if mode not in MODES:
        raise BincamError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if engine == "torch":
        from bincam.checkpoint import load_checkpoint
        from bincam.explanation import explain, model_attributes

        model = load_checkpoint(checkpoint)
        names = resolve_attributes(attributes, model_attributes(model))
        image_size, layer = model.card.image_size, layer or model.default_cam_layer

        def run(x):
            return explain(model, x, method=method, mode=mode, attributes=names, layer=layer)
    elif engine in ("ort", "trt"):
        if engine == "ort":
            from bincam.runtime.ort_engine import OrtEngine as Engine
        else:
            from bincam.runtime.trt_engine import TrtEngine as Engine
        session = Engine(checkpoint)
        if layer and layer != session.info.target_layer:
            raise BincamError(f"{checkpoint} was exported for layer {session.info.target_layer!r}; "
                              "export again for another layer")
        names = resolve_attributes(attributes, session.attributes)
        image_size, layer = session.info.image_size, session.info.target_layer

        def run(x):
            return session.explain(x, method=method, mode=mode, attributes=names)
    else:
        raise BincamError(f"--engine must be torch, ort or trt, got {engine!r}")
    readable, pixels = _read_all(_expand(inputs), image_size, size, on_error)
    records, raws, logits, energies = [], [], [], []
    with Progress(TextColumn("explaining"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("cam", total=len(readable))
        for start in range(0, len(readable), batch_size):
            chunk = pixels[start:start + batch_size]
            x = np.stack([p[0] for p in chunk]).transpose(0, 3, 1, 2)
            result = run(x)
            maps, pe = np.asarray(result.heatmaps(size)), result.proportional_energy()
            probs = np.asarray(result.probabilities)
            for i, path in enumerate(readable[start:start + batch_size]):
                _write_pictures(out, path.stem, chunk[i][1], maps[i], names, probs[i])
                records.append({"file": str(path), "logits": np.asarray(result.logits[i]).tolist(),
                                "probabilities": probs[i].tolist(),
                                "predicted": [int(v) for v in (probs[i] >= 0.5)],
                                "proportional_energy": pe[i].tolist()})
                bar.advance(task)
            raws.append(np.asarray(result.raw, dtype=np.float32))
            logits.append(np.asarray(result.logits))
            energies.append(pe)
    summary = {"model": str(checkpoint), "engine": engine, "method": method, "mode": mode,
               "layer": layer, "attributes": names, "images": records}
    write_atomic(out / "predictions.json", json.dumps(summary, indent=2).encode())
    buf = io.BytesIO()
    np.savez_compressed(buf, files=np.array([str(p) for p in readable]), attributes=np.array(names),
                        logits=np.concatenate(logits), raw=np.concatenate(raws),
                        proportional_energy=np.concatenate(energies), method=method, mode=mode)
    write_atomic(out / "cams.npz", buf.getvalue())
    console.print(f"explained {len(records)} image(s) × {len(names)} attribute(s) → {out}")
