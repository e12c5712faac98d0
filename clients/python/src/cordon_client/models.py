"""What the server answers with, as plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["AccessEntry", "AccessLog", "Erased", "Memory", "Page"]


@dataclass(frozen=True)
class Memory:
    """One stored memory.

    ``created_at`` is the time it was stored, in milliseconds since the Unix
    epoch. ``score`` is the similarity to the query (cosine, -1 to 1) for
    results of :meth:`Cordon.recall`, and ``None`` everywhere else.
    ``version`` is 1 when stored and one more with each update (pass it to
    :meth:`Cordon.update` as ``if_version``); ``updated_at`` and
    ``expires_at`` are milliseconds since the epoch, or ``None``.
    """

    id: str
    text: str
    metadata: Dict[str, Any] = field(default_factory=dict)
    created_at: int = 0
    score: Optional[float] = None
    version: int = 1
    updated_at: Optional[int] = None
    expires_at: Optional[int] = None

    @classmethod
    def from_json(cls, obj: Any) -> Memory:
        """A memory from the server's JSON object; ``ValueError`` if it is not one."""
        if not isinstance(obj, dict):
            raise ValueError("a memory must be a JSON object")
        id_, text = obj.get("id"), obj.get("text")
        if not isinstance(id_, str) or not isinstance(text, str):
            raise ValueError("a memory needs a string `id` and `text`")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("a memory's `metadata` must be a JSON object")
        created_at = obj.get("created_at", 0)
        if not isinstance(created_at, int):
            raise ValueError("a memory's `created_at` must be an integer")
        score = obj.get("score")
        if score is not None and not isinstance(score, (int, float)):
            raise ValueError("a memory's `score` must be a number")
        version = obj.get("version", 1)
        updated_at, expires_at = obj.get("updated_at"), obj.get("expires_at")
        for name, value in (("version", version), ("updated_at", updated_at), ("expires_at", expires_at)):
            if value is not None and not isinstance(value, int):
                raise ValueError(f"a memory's `{name}` must be an integer")
        return cls(
            id=id_,
            text=text,
            metadata=metadata,
            created_at=created_at,
            score=None if score is None else float(score),
            version=version,
            updated_at=updated_at,
            expires_at=expires_at,
        )


@dataclass(frozen=True)
class Page:
    """One page of :meth:`Cordon.list`; pass ``next_cursor`` on for the next
    page (``None`` on the last one)."""

    memories: List[Memory]
    next_cursor: Optional[str] = None


@dataclass(frozen=True)
class AccessEntry:
    """One access to the user's memories, from :meth:`Cordon.access_log`:
    when (``at``, milliseconds since the epoch), what (``action``), through
    what (``via``: ``http``, ``mcp`` or ``admin``), the token's ``jti`` or a
    keyed tag of it, a keyed tag of the client address, and how many
    memories it touched."""

    at: int
    action: str
    via: str
    token: str
    client: str
    memories: int

    @classmethod
    def from_json(cls, obj: Any) -> AccessEntry:
        """An entry from the server's JSON object; ``ValueError`` if it is not one."""
        if not isinstance(obj, dict):
            raise ValueError("an access-log entry must be a JSON object")
        try:
            entry = cls(**{name: obj[name] for name in ("at", "action", "via", "token", "client", "memories")})
        except KeyError as e:
            raise ValueError(f"an access-log entry needs `{e.args[0]}`") from e
        for name in ("at", "memories"):
            if not isinstance(getattr(entry, name), int):
                raise ValueError(f"an access-log entry's `{name}` must be an integer")
        for name in ("action", "via", "token", "client"):
            if not isinstance(getattr(entry, name), str):
                raise ValueError(f"an access-log entry's `{name}` must be a string")
        return entry


@dataclass(frozen=True)
class AccessLog:
    """One page of :meth:`Cordon.access_log`, newest first; pass ``next`` as
    ``before`` for the next, older page (``None`` on the last one)."""

    entries: List[AccessEntry]
    next: Optional[int] = None


@dataclass(frozen=True)
class Erased:
    """What :meth:`Cordon.erase_all_receipt` answers: how many memories were
    deleted, and the server's signed receipt (a compact JWS, EdDSA) that
    ``cordon verify`` or any JWT library checks against the keys at
    ``/.well-known/cordon-signing-keys.json``."""

    deleted: int
    receipt: str
