"""``python -m analoglab`` runs the CLI."""

from analoglab.cli import main

main()
