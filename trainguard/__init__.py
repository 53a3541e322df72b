"""trainguard: a streaming monitor that watches post-training runs and stops them going wrong.

The trainer side is :class:`EventWriter`; importing it never imports torch or the monitor.
"""

from trainguard.emitters.writer import EventWriter

__version__ = "0.1.0"
__all__ = ["EventWriter", "__version__"]
