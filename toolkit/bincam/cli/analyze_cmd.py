"""``bincam analyze``: the paper's bias audit of one or more models over a dataset split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from bincam.cli.app import app, console


class _Speed(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:7.1f} img/s" if task.speed else "      ? img/s")


class _RichProgress:
    """Runner progress as a Rich bar per model (images/s and ETA)."""

    def __init__(self, bar: Progress):
        self.bar, self.task = bar, None

    def start(self, model: str, total: int, done: int) -> None:
        self.task = self.bar.add_task(model, total=total, completed=done)

    def advance(self, images: int) -> None:
        self.bar.advance(self.task, images)


@app.command("analyze")
def analyze(model: List[str] = typer.Option(..., help="NAME=CHECKPOINT_OR_ONNX; repeat for "
                                            "several models (e.g. unbalanced=… balanced=…)."),
            data: str = typer.Option(..., help="synth:DIR, celeba:DIR or csv:FILE (PE against "
                                     "each image's own boxes/masks where given)"),
            out: Path = typer.Option(..., help="Output folder; rerun the same command to resume."),
            split: str = typer.Option("test", help="train, valid, test or all"),
            frontal: bool = typer.Option(False, help="Keep near-frontal faces only (d/D ≤ 0.1)."),
            method: str = typer.Option("gradcam", help="gradcam, hirescam, gradcam-elementwise, "
                                       "xgradcam, gradcam++ or layercam"),
            engine: str = typer.Option("ort", help="ort (a checkpoint is exported first), torch "
                                       "(checkpoints) or trt (TensorRT, NVIDIA GPU)"),
            device: str = typer.Option("cpu", help="cpu or cuda"),
            batch_size: int = typer.Option(64),
            shard_size: int = typer.Option(1024, help="Images per shard: the unit of resume and "
                                           "of work split between processes."),
            limit: int = typer.Option(None, help="Only the first N images of the split."),
            save_maps: bool = typer.Option(False, help="Also store the raw h×w maps."),
            cues: str = typer.Option("auto", help="PE against synthetic cue masks: auto (when "
                                     "the dataset has them), on or off"),
            workers: int = typer.Option(2, help="Image-decoding threads."),
            threads: int = typer.Option(None, help="Engine threads (default: one per core)."),
            restart: bool = typer.Option(False, help="Discard an earlier analysis in OUT made "
                                         "with a different command line.")) -> None:
    """Error rates by class, PE of binary CAMs by predicted class, evidence vs bias, average
    maps: tables (Markdown, LaTeX, CSV), plots and OUT/report.md."""
    started = time.perf_counter()  # the report's wall time: the whole command
    from bincam.analysis import AnalyzeOptions, analyze as run

    options = AnalyzeOptions(list(model), data, out, split, frontal, method, engine, device,
                             batch_size, shard_size, limit, save_maps, cues, workers, threads,
                             restart)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Speed(),
                  TimeRemainingColumn(), console=console) as bar:
        record = run(options, _RichProgress(bar), started)
    if record is not None:
        console.print(f"analysed {record['images']} images × {len(record['models'])} model(s) "
                      f"→ {out / 'report.md'}")
