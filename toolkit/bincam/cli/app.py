"""Root Typer app. User errors (``BincamError``) print one line and exit 2, without a traceback."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from bincam import __version__
from bincam.errors import BincamError

console = Console(stderr=True)  # progress, messages and errors
results = Console()  # what a command was asked to show (info): stdout, so it can be piped
FULL_PROFILE = ("torch", "torchvision", "safetensors", "onnxscript")  # pip install 'bincam[full]'


def show_rows(rows: list[tuple[str, str]]) -> None:
    """A command's result as ``(field, value)`` rows on stdout: a table on a terminal, else one
    ``field<TAB>value`` line per row, unwrapped (for grep, cut and scripts)."""
    if not results.is_terminal:
        for field, value in rows:
            print(f"{field}\t{value}")
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for field, value in rows:
        table.add_row(field, escape(value))
    results.print(table)


def _hide_flag_types() -> None:
    """Typer 0.29's help shows a ``<bool>`` type after every flag (``--help <bool>``); a flag
    takes no value, so show none (the one place bincam adjusts Typer's rendering)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "bincam", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.bincam = True
    TyperOption.display_type_rich = display_type_rich


_hide_flag_types()
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


def _usage_error(exc: typer.TyperException) -> None:
    """A command-line usage error (unknown option, a value of the wrong type) on one line."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    message = " ".join(exc.format_message().split()) if hasattr(exc, "format_message") \
        else str(exc)
    console.print(f"[bold red]error:[/] {escape(message)}{escape(where)}", highlight=False,
                  soft_wrap=True)
    sys.exit(2)


def main() -> None:
    _register()
    try:
        code = app(standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C inside a command into exit status 130
            console.print("[yellow]interrupted[/]")
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Abort:
        console.print("[yellow]aborted[/]")
        sys.exit(1)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed already
            sys.exit(2)
        _usage_error(exc)
    except BincamError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in FULL_PROFILE:
            raise
        message = (f"this needs {exc.name.split('.')[0]}, which the runtime install lacks (it "
                   "explains, audits and serves exported ONNX files); install the full profile "
                   "for checkpoints, training and export: pip install 'bincam[full]'")
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
