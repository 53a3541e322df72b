"""What runs inside the trainer: the event writer and framework callbacks.

Nothing here imports the monitor, the rules, torch or transformers at import time.
"""

from trainguard.emitters.writer import EventWriter, resolve_rank

__all__ = ["EventWriter", "resolve_rank"]
