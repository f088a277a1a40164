"""``bincam data synth``: write a synthetic-faces dataset; ``bincam data synth-task``: the synthetic
one-logit lesion task in the CSV layout."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bincam.cli.app import app, console

data_app = typer.Typer(help="Datasets: synthesize faces or a one-logit lesion task.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth(out: Path = typer.Option(..., help="Folder to write; the dataset goes to OUT/celeba."),
          n: int = typer.Option(20000, help="Number of images."),
          seed: int = typer.Option(0, help="Random seed; the same seed gives the same bytes."),
          size: int = typer.Option(224, help="Side of the square aligned images in pixels."),
          workers: int = typer.Option(1, help="Processes that render (same output for any value)."),
          split: str = typer.Option("all", help="all (80/10/10 % train/valid/test, like "
                                    "CelebA), or train, valid or test for every image."),
          overwrite: bool = typer.Option(False, help="Replace an existing OUT/celeba.")) -> None:
    """Procedural aligned faces in torchvision's CelebA layout, with cue ground truth."""
    from bincam.data.synth import synthesize
    from bincam.files import check_output

    check_output(out, "--out", folder=True)

    with Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("synth", total=n)
        folder = synthesize(out, n, seed=seed, size=size, workers=workers, overwrite=overwrite,
                            split=split,
                            progress=lambda done: bar.update(task, completed=done))
    console.print(f"wrote {n} faces to {folder}")


@data_app.command("synth-task")
def synth_task(out: Path = typer.Option(..., help="Folder to write (it receives labels.csv); "
                                        "train on it with --data csv:OUT."),
               n: int = typer.Option(2000, help="Number of images (80/10/10 % train/valid/test)."),
               seed: int = typer.Option(0, help="Random seed; the same seed gives the same bytes."),
               size: int = typer.Option(64, help="Side of the square grey images in pixels."),
               prevalence: float = typer.Option(0.1, help="Share of lesion images in each split."),
               confound: float = typer.Option(0.0, help="Share of the lesion images that also "
                                              "carry a spurious corner tag (never drawn without "
                                              "a lesion); 0 = no tags."),
               overwrite: bool = typer.Option(False, help="Replace an existing OUT.")) -> None:
    """One-logit "lesion present" on textured grey images, with per-image lesion boxes
    (boxes:lesion) and the tags' boxes (markers.json) as ground truth."""
    from bincam.data.synth_task import synthesize_task
    from bincam.files import check_output

    check_output(out, "--out", folder=True)
    with Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("synth-task", total=n)
        folder = synthesize_task(out, n, seed=seed, size=size, prevalence=prevalence,
                                 confound=confound, overwrite=overwrite,
                                 progress=lambda done: bar.update(task, completed=done))
    console.print(f"wrote {n} images to {folder} (train with --data csv:{folder})")
