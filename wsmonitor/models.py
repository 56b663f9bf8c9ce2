"""wsmonitor stores nothing; the console's permissions need a model (without a table)."""

from .console.models import Console

__all__ = ["Console"]
