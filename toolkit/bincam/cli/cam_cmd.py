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

MANIFEST = "predictions.json"   # marks a folder as an earlier `bincam cam` output


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


def _read_all(files: list[Path], model_size: int, size: int, on_error: str,
              fit: str = "celeba"):
    """Decode every input first (model input and display copy, both by the model's fit rule,
    ``data.fit``), so a failure stops before output."""
    from bincam.data.fit import load_fitted

    readable, pixels = [], []
    for path in files:
        try:
            pixels.append((load_fitted(path, model_size, fit), load_fitted(path, size, fit)))
            readable.append(path)
        except BincamError as exc:
            if on_error == "fail":
                raise BincamError(f"{exc} (--on-error fail: nothing written)") from None
            console.print(f"[yellow]skipped[/] {escape(str(exc))}", highlight=False)
    if not readable:
        raise BincamError("no input could be read; nothing written")
    return readable, pixels


def _write_pictures(out: Path, stem: str, shown: np.ndarray, maps: np.ndarray, names: list[str],
                    probs: np.ndarray, title: str | None = None, label: bool = False) -> None:
    """One overlay per attribute (with ``label``: the attribute and its prediction written on
    it) and the image's grid figure (``title``: model, method, mode above it)."""
    from bincam.core.overlay import grid_figure, labelled, overlay, png_bytes

    pictures, titles = [], []
    for k, attr in enumerate(names):
        picture = overlay(shown, maps[k])
        predicted = f"{'pos' if probs[k] >= 0.5 else 'neg'} p={probs[k]:.2f}"
        _write(out / "overlays" / stem / f"{attr}.png", png_bytes(
            labelled(picture, f"{attr}: {predicted}") if label else picture))
        pictures.append(picture)
        titles.append(f"{attr}\n{predicted}")
    _write(out / "grids" / f"{stem}.png", grid_figure(shown, pictures, titles, title=title))


def _write(path: Path, data: bytes) -> None:
    """A plain write: ``path`` lies in the temporary folder that becomes ``--out`` whole, so the
    folder's rename is what makes the output appear at once (no per-file temporaries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def unique_stems(paths: list[Path]) -> dict[Path, str]:
    """A distinct picture name per input: its stem, with its suffix and then a counter added
    where stems collide (``a/face.png``, ``a/face.jpg``, ``b/face.png`` → ``face.png``,
    ``face.jpg``, ``face.png-2``)."""
    stems: dict[Path, str] = {}
    taken: set[str] = set()
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    for p in paths:
        name = p.stem if counts[p.stem] == 1 else p.name
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        stems[p] = name
    return stems


@app.command("cam")
def cam(checkpoint: Path = typer.Argument(..., help="Checkpoint folder, or an exported ONNX "
                                         "file with --engine ort."),
        inputs: List[Path] = typer.Argument(..., help="Images and/or folders of images."),
        out: Path = typer.Option(..., help="Output folder, written whole (it replaces an "
                                 "earlier cam output there)."),
        method: str = typer.Option(None, help="gradcam (default), hirescam, "
                                   "gradcam-elementwise, xgradcam, gradcam++ or layercam; an "
                                   "explaining file's own method by default"),
        mode: str = typer.Option(None, help="predicted (|z|, default), positive (z), negative "
                                 "(−z); an explaining file's own mode by default"),
        attributes: str = typer.Option("all", help="Comma-separated names or indices."),
        layer: str = typer.Option(None, help="CAM layer (default: the net's final tap)."),
        size: int = typer.Option(224, help="Side of overlays and grids in pixels."),
        batch_size: int = typer.Option(16),
        engine: str = typer.Option("auto", help="auto (torch for a checkpoint, ort for ONNX), "
                                   "torch, ort or trt (trt needs TensorRT and an NVIDIA GPU); a "
                                   "checkpoint on ort/trt is exported first."),
        on_error: str = typer.Option("skip", help="skip or fail on unreadable inputs."),
        label: bool = typer.Option(False, "--label", help="Write the attribute and its "
                                   "prediction onto each single overlay (default: clean "
                                   "images).")) -> None:
    """Explain every selected attribute of each image for its predicted class."""
    from bincam.attributes import resolve_attributes
    from bincam.core.methods import cam_method
    from bincam.core.modes import check_mode
    from bincam.files import atomic_folder, check_output, check_replaceable
    from bincam.runtime import open_engine

    if on_error not in ("skip", "fail"):
        raise BincamError(f"--on-error must be skip or fail, got {on_error!r}")
    if not 1 <= batch_size <= 4096:
        raise BincamError(f"--batch-size must be between 1 and 4096, got {batch_size}")
    if not 8 <= size <= 4096:
        raise BincamError(f"--size must be between 8 and 4096 pixels, got {size}")
    check_output(out, "--out", folder=True)
    check_replaceable(out, "--out", MANIFEST)
    cam_method(method or "gradcam"), check_mode(mode or "predicted")
    files = _expand(inputs)
    with open_engine(checkpoint, engine, layer=layer) as session:
        own = session.info.explain or {}
        method, mode = method or own.get("method", "gradcam"), mode or own.get("mode", "predicted")
        names = resolve_attributes(attributes, session.attributes)
        info = session.info
        summary = {"model": str(checkpoint), "engine": session.kind, "method": method,
                   "mode": mode, "layer": info.target_layer, "attributes": names,
                   "head": info.head} | ({"classes": info.classes,
                                          "positive_class": info.positive_class,
                                          "probabilities": "softmax of the classes",
                                          "target": info.target}
                                         if info.head == "softmax" else {})
        readable, pixels = _read_all(files, session.info.image_size, size, on_error,
                                     session.info.input_fit)
        with atomic_folder(out) as tmp:  # OUT appears whole when everything is written
            title = (f"model {Path(checkpoint).name} · {method} · mode {mode} · layer "
                     f"{session.info.target_layer} · {session.kind} engine"
                     + (" · p: softmax probability" if info.head == "softmax" else "")
                     + (" · maps of the class logit z_c" if info.target == "logit" else ""))
            records, arrays = _explain_all(session, readable, pixels, tmp, size, batch_size,
                                           (title, label), method=method, mode=mode,
                                           attributes=names)
            buf = io.BytesIO()
            np.savez_compressed(buf, files=np.array([str(p) for p in readable]),
                                attributes=np.array(names), **arrays, method=method, mode=mode)
            _write(tmp / "cams.npz", buf.getvalue())
            _write(tmp / MANIFEST, json.dumps(summary | {"images": records}, indent=2).encode())
    console.print(f"explained {len(records)} image(s) × {len(names)} attribute(s) → {out}")


def _explain_all(session, readable: list[Path], pixels: list, out: Path, size: int,
                 batch_size: int, pictures: tuple = (None, False), **explain
                 ) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Explain the decoded images batch by batch, writing each image's pictures (``pictures``:
    the grid title and whether overlays are labelled); return the
    per-image records and the stacked ``logits``, ``raw`` and ``proportional_energy`` (an
    explaining file without raw maps: its own ``heatmaps`` instead of ``raw``)."""
    from bincam.core.checks import check_logits

    records, raws, logits, energies = [], [], [], []
    stems = unique_stems(readable)
    with Progress(TextColumn("explaining"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("cam", total=len(readable))
        for start in range(0, len(readable), batch_size):
            chunk = pixels[start:start + batch_size]
            x = np.stack([p[0] for p in chunk]).transpose(0, 3, 1, 2)
            result = session.explain(x, **explain)
            check_logits(result.logits, [str(p) for p in readable[start:start + batch_size]])
            maps, pe, probs = result.heatmaps(size), result.proportional_energy(), \
                result.probabilities
            for i, path in enumerate(readable[start:start + batch_size]):
                _write_pictures(out, stems[path], chunk[i][1], maps[i], result.attributes,
                                probs[i], *pictures)
                records.append({"file": str(path), "pictures": stems[path],
                                "logits": result.logits[i].tolist(),
                                "probabilities": probs[i].tolist(),
                                "predicted": [int(v) for v in (probs[i] >= 0.5)],
                                "proportional_energy": [None if np.isnan(v) else v
                                                        for v in pe[i].tolist()]})
                bar.advance(task)
            raws.append((result.raw if result.raw is not None else result.heatmaps()
                         ).astype(np.float32))
            logits.append(result.logits)
            energies.append(pe)
    return records, {"logits": np.concatenate(logits),
                     "raw" if result.raw is not None else "heatmaps": np.concatenate(raws),
                     "proportional_energy": np.concatenate(energies)}
