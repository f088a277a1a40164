"""``python -m bincam`` runs the command-line interface."""

from bincam.cli import main

main()
