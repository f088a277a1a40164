"""``bincam bench``: latency and fidelity of the engines, against eager PyTorch and the reference."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bincam.cli.app import app, console
from bincam.errors import BincamError


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BincamError(f"{option} takes comma-separated integers, got {text!r}") from None


@app.command("bench")
def bench(model: str = typer.Argument(..., help="Checkpoint folder, exported .onnx, or "
                                      "arch:NAME (random weights, for timing)."),
          engines: str = typer.Option("torch,ort", help="Comma-separated: torch, ort, trt "
                                      "(TensorRT, NVIDIA GPU)."),
          batch: str = typer.Option("1,8", help="Comma-separated batch sizes."),
          method: str = typer.Option("gradcam", help="gradcam, hirescam, gradcam-elementwise, "
                                     "xgradcam, gradcam++ or layercam."),
          attributes: str = typer.Option("all", help="Comma-separated names or indices."),
          device: str = typer.Option("cpu", help="cpu or cuda."),
          warmup: int = typer.Option(2, help="Untimed calls of each scope first."),
          iters: int = typer.Option(15, help="Timed iterations in all (each runs every scope "
                                    "once), spread over the rounds; at least 3 per round."),
          rounds: int = typer.Option(5, help="Rounds over all batches, engines and baselines; "
                                     "the ratios' noise band is their range over rounds."),
          images: str = typer.Option("synth", help="synth (faces rendered in memory), random, "
                                     "or an image folder."),
          reference_images: int = typer.Option(1, help="Images timed per baseline (|z| target, "
                                               "one call per attribute and image); 0 skips "
                                               "the baselines."),
          baselines: str = typer.Option("pytorch-grad-cam,torch-cam", help="Reference tools, "
                                        "each run where installed."),
          fidelity_images: int = typer.Option(8, help="Images compared with the torch engine."),
          threads: int = typer.Option(None, help="ORT intra-op threads (default: all cores)."),
          checkpoint: str = typer.Option(None, help="The checkpoint of an ONNX MODEL (for the "
                                         "torch engine, fidelity and the reference)."),
          json_out: Path = typer.Option(None, "--json", help="Write every sample and the machine "
                                        "here."),
          markdown_out: Path = typer.Option(None, "--markdown", help="Also write the tables as "
                                            "Markdown.")) -> None:
    """Time forward-only, CAM and end-to-end scopes of each engine, and compare their maps."""
    from bincam.bench.report import markdown, rich_tables, skipped_lines, write_json
    from bincam.bench.runner import BenchConfig, run_bench, total_steps
    from bincam.core.methods import cam_method
    from bincam.files import check_output

    cam_method(method)
    config = BenchConfig(model=model, engines=[e.strip() for e in engines.split(",") if e.strip()],
                         batches=_ints(batch, "--batch"), method=method, attributes=attributes,
                         device=device, warmup=warmup, iters=iters, rounds=rounds, images=images,
                         reference_images=reference_images, fidelity_images=fidelity_images,
                         baselines=[b.strip() for b in baselines.split(",") if b.strip()],
                         threads=threads, checkpoint=checkpoint).check()
    for option, path in (("--json", json_out), ("--markdown", markdown_out)):
        if path is not None:
            check_output(path, option, folder=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("loading", total=total_steps(config))
        record = run_bench(config, lambda d: bar.update(task, advance=1, description=d))
    for table in rich_tables(record):
        console.print(table)
    for line in skipped_lines(record):
        console.print(line, highlight=False)
    if json_out:
        write_json(record, json_out)
        console.print(f"wrote {json_out}")
    if markdown_out:
        from bincam.files import write_atomic

        write_atomic(markdown_out, markdown(record).encode())
        console.print(f"wrote {markdown_out}")
