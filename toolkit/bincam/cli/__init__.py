"""The ``bincam`` command line: a thin Typer + Rich layer over the Python API."""

from bincam.cli.app import app, main

__all__ = ["app", "main"]
