"""A small client for Cordon, a memory server for AI agents.

    from cordon_client import Cordon

    with Cordon("http://127.0.0.1:8080", token) as memory:
        memory.remember("I am allergic to peanuts", {"source": "chat"})
        for m in memory.recall("what can I not eat?", limit=3):
            print(m.score, m.text)

The user is whoever the token names; the client never sends a user id.
"""

from __future__ import annotations

from .client import AsyncCordon, Cordon, Filter, MemoryInput, __version__
from .errors import CordonError
from .models import AccessEntry, AccessLog, Erased, Memory, Page

__all__ = [
    "AccessEntry",
    "AccessLog",
    "AsyncCordon",
    "Cordon",
    "CordonError",
    "Erased",
    "Filter",
    "Memory",
    "MemoryInput",
    "Page",
    "__version__",
]
