"""Keep Python's cyclic collector off the objects that existed before recording started.

A recorded step allocates many short-lived containers (call bodies, frames, collectors) that
live through the backward pass and so reach the oldest generation; every few steps that
triggers a full collection, which walks every object of the process (torch's own several
hundred thousand included): about 50 ms on a small CPU machine, more than a GPU training
step. ``gc.freeze()`` moves what exists now out of the collector's way until ``thaw``;
reference counting still frees those objects as usual, only cycles among them wait.
A process that froze objects itself is left alone.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["freeze_heap", "thaw_heap"]

_lock = threading.Lock()
_holders = 0


def freeze_heap() -> bool:
    """Collect once, then freeze the heap; True when this call took a hold to ``thaw_heap``."""
    global _holders
    with _lock:
        if _holders:
            _holders += 1
            return True
        if not gc.isenabled() or gc.get_freeze_count():
            return False
        gc.collect()
        gc.freeze()
        _holders = 1
        return True


def thaw_heap() -> None:
    """Give back a hold from ``freeze_heap``; the last one unfreezes."""
    global _holders
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()
