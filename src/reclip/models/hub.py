"""Is the Hugging Face hub reachable? Asked once per process, answered in seconds.

Without network, huggingface_hub retries each download with back-off for about a minute
before it gives up. ``hub_reachable`` instead opens one TCP connection to the hub's endpoint
(``HF_ENDPOINT``, default huggingface.co) with a short timeout, in a thread so that a slow
name lookup cannot hold it either; ``offline_hub`` then makes the libraries read only their
local cache, which answers at once: the cached weights, or an error we turn into one line.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0
OFFLINE_VALUES = ("1", "true", "yes", "on")


def offline_requested() -> bool:
    """True when the user set HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) to a true value."""
    return any(os.environ.get(v, "").strip().lower() in OFFLINE_VALUES
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def endpoint() -> tuple[str, int]:
    """(host, port) of the hub endpoint."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@lru_cache(maxsize=None)
def _can_connect(host: str, port: int, timeout: float) -> bool:
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the endpoint does not accept a connection within
    ``CONNECT_TIMEOUT_S`` seconds (remembered for the rest of the process)."""
    if offline_requested():
        return False
    host, port = endpoint()
    return _can_connect(host, port, CONNECT_TIMEOUT_S)


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Inside the block, huggingface_hub serves files from its local cache only (no retries)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # nothing would use the hub anyway
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
