"""Root Typer app. User errors (``BincamError``) print one line and exit 2, without a traceback."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from bincam import __version__
from bincam.errors import BincamError

console = Console(stderr=True)
app = typer.Typer(help="Binary class activation maps for multi-attribute binary classifiers.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)


def _version(value: bool) -> None:
    if value:
        print(f"bincam {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """bincam: explain binary attribute classifiers for both classes, at dataset scale."""


def _register() -> None:
    from bincam.cli import (analyze_cmd, bench_cmd, cam_cmd, data_cmd,  # noqa: F401
                            export_cmd, model_cmd, serve_cmd, train_cmd)


def main() -> None:
    _register()
    try:
        app()
    except BincamError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
