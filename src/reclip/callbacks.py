"""``reclip.callbacks``: the hooks into ``ReCLIP.fit`` (defined in ``reclip.method.callbacks``)."""
from __future__ import annotations

from .method.callbacks import Callback, PrintProgress, epoch_line, final_line

__all__ = ["Callback", "PrintProgress", "epoch_line", "final_line"]
