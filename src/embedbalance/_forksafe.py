"""Locks that survive ``fork()``: a child gets fresh ones.

Why: ``gunicorn --preload`` and multiprocessing's ``fork`` copy the parent's memory,
locks included, but not its threads. A lock that a health-check or discovery thread
held at that instant stays locked forever in the child, and the first request there
would hang. Objects registered here get every ``threading.Lock`` attribute replaced
with a new one in the child (the state they guard is still consistent: each critical
section here is a few field updates, and a child starts its own threads afresh).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["register"]

_LOCK_TYPE = type(threading.Lock())
# By identity (attrs records compare by value and are unhashable), dropped with the object.
_objects: dict[int, weakref.ref[Any]] = {}


def register(obj: Any) -> None:
    """Give ``obj`` fresh locks in a forked child."""
    key = id(obj)
    _objects[key] = weakref.ref(obj, lambda _: _objects.pop(key, None))


def _renew_locks() -> None:
    for ref in list(_objects.values()):
        obj = ref()
        if obj is None:
            continue
        slots = getattr(type(obj), "__slots__", ())
        names = [*getattr(obj, "__dict__", {}), *(slots if isinstance(slots, tuple) else ())]
        for name in names:
            if isinstance(getattr(obj, name, None), _LOCK_TYPE):
                object.__setattr__(obj, name, threading.Lock())


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_renew_locks)
