"""``bincam train``: train an unbalanced, balanced or MOON-weighted attribute classifier."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn)

from bincam.cli.app import app, console


class RichReporter:
    """Progress bars and one summary line per epoch."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.images = 0
        self.start = 0.0

    def stage(self, text):
        console.print(f"[dim]{text}[/]")

    def decode_progress(self, done, total):
        if self.task is None:
            self.task = self.progress.add_task("decoding", total=total, info="")
        self.progress.update(self.task, completed=done)

    def epoch_start(self, epoch, epochs, steps):
        import time

        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, info="")
        self.images, self.start = 0, time.perf_counter()

    def step(self, images, loss):
        import time

        self.images += images
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=1, info=f"loss {loss:.4f} · {rate:.0f} img/s")

    def epoch_end(self, r):
        console.print(f"epoch {r['epoch'] + 1}: train loss {r['train_loss']:.4f}, val loss "
                      f"{r['val_loss']:.4f}, minority err {r['val_minority_error']:.3f}, majority "
                      f"err {r['val_majority_error']:.3f}, {r['images_per_s']:.0f} img/s")


def _labels(data: str, attributes: str | None) -> list[str] | None:
    """The label subset: CelebA names or indices for faces, the CSV's own names for csv:."""
    from bincam.attributes import resolve_attributes

    if not attributes:
        return None
    if data.startswith("csv:"):
        return [a.strip() for a in attributes.split(",") if a.strip()]
    return resolve_attributes(attributes)


@app.command("train")
def train(data: str = typer.Option(..., help="synth:DIR, celeba:DIR or csv:FILE (labels.csv "
                                    "with any binary labels; a folder holding it too)"),
          out: Path = typer.Option(..., help="Checkpoint folder (best epoch) and training state."),
          arch: str = typer.Option("small", help="small, resnet18, resnet34, resnet50 or affact"),
          width: int = typer.Option(16, help="Base width of the small net."),
          weighting: str = typer.Option("none", help="none, balanced or moon"),
          epochs: int = typer.Option(8), batch_size: int = typer.Option(64),
          lr: float = typer.Option(2e-3), weight_decay: float = typer.Option(1e-4),
          image_size: int = typer.Option(112, help="Training resolution of the aligned face."),
          seed: int = typer.Option(0), flip: bool = typer.Option(True, help="Random h-flips."),
          attributes: str = typer.Option(None, help="Comma-separated subset of the labels "
                                         "(default: all)."),
          max_train_images: int = typer.Option(None, help="Use only the first N training images."),
          max_val_images: int = typer.Option(None, help="Use only the first N validation images."),
          threads: int = typer.Option(None, help="Torch CPU threads per process."),
          resume: bool = typer.Option(False, help="Continue the run saved in --out.")) -> None:
    """Per-attribute BCE with attribute-specific class weights; best epoch by validation loss."""
    from bincam.training import TrainConfig
    from bincam.training.loop import train as run

    config = TrainConfig(data=data, out=str(out), arch=arch, width=width, weighting=weighting,
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         image_size=image_size, seed=seed, flip=flip,
                         attributes=_labels(data, attributes),
                         max_train_images=max_train_images, max_val_images=max_val_images,
                         threads=threads, resume=resume)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TaskProgressColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=console, transient=True) as progress:
        quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
        folder = run(config, None if quiet else RichReporter(progress))
    console.print(f"best checkpoint: {folder}")
