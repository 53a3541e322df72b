"""``python -m trainguard``."""

from trainguard.cli import run

run()
