"""``reclip.callbacks``: the hooks into ``ReCLIP.fit`` (defined in ``reclip.method.callbacks``)."""
from __future__ import annotations

from .method.callbacks import Callback, PrintProgress

__all__ = ["Callback", "PrintProgress"]
