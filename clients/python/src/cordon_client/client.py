"""Sync and async clients for Cordon's memory API.

Each operation is described once, as a :class:`_Call` (the request and how to
read its answer); :class:`Cordon` and :class:`AsyncCordon` only differ in how
they send it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)
from urllib.parse import quote

import httpx

from .errors import CordonError
from .models import AccessEntry, AccessLog, Erased, Memory, Page

__all__ = ["AsyncCordon", "Cordon", "MemoryInput"]

__version__ = "0.1.0"

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_RETRY_WAIT = 10.0
_RETRY_STATUSES = frozenset({429, 503})

#: One memory to store: its text, or ``{"text": ..., "metadata": {...}}`` with
#: optional ``expires_at``, ``ttl_seconds`` and ``duplicate_threshold``.
MemoryInput = Union[str, Mapping[str, Any]]
#: A metadata filter for :meth:`Cordon.recall` and :meth:`Cordon.list`: each
#: key maps to a value to equal, ``{"in": [...]}`` or a numeric range such as
#: ``{"gte": 10, "lt": 20}``.
Filter = Mapping[str, Any]
#: Leave a field as it is (distinct from ``None``, which some fields take).
_UNSET: Any = object()
_Params = Dict[str, Union[str, int]]

T = TypeVar("T")


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and how to read its successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: Any = None
    params: Optional[_Params] = None
    headers: Optional[Dict[str, str]] = None
    #: Whether a 429/503 with Retry-After may be retried (the call is idempotent).
    retry: bool = True
    #: Whether a 404 is an answer (passed to ``parse``) rather than an error.
    not_found_ok: bool = False


@dataclass(frozen=True)
class _Retry:
    """Send the call again after ``delay`` seconds."""

    delay: float


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise CordonError(
            response.status_code, "invalid_response", f"the body is not JSON: {e}"
        ) from e


def _field(response: httpx.Response, name: str) -> Any:
    body = _json(response)
    if not isinstance(body, dict) or name not in body:
        raise ValueError(f"the answer has no `{name}`")
    return body[name]


def _memories(value: Any) -> List[Memory]:
    if not isinstance(value, list):
        raise ValueError("expected a list of memories")
    return [Memory.from_json(m) for m in value]


def _parse_ids(response: httpx.Response) -> List[str]:
    ids = _field(response, "ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("`ids` must be a list of strings")
    return ids


def _parse_page(response: httpx.Response) -> Page:
    memories = _memories(_field(response, "memories"))
    cursor = _json(response).get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise ValueError("`next_cursor` must be a string or null")
    return Page(memories=memories, next_cursor=cursor)


def _parse_embeddings(response: httpx.Response) -> List[List[float]]:
    data = _field(response, "data")
    if not isinstance(data, list):
        raise ValueError("`data` must be a list")
    ordered = sorted(data, key=lambda d: int(d["index"]))
    vectors: List[List[float]] = []
    for item in ordered:
        vector = item["embedding"]
        if not isinstance(vector, list):
            raise ValueError("an embedding must be a list of floats")
        vectors.append([float(x) for x in vector])
    return vectors


def _parse_deleted(response: httpx.Response) -> int:
    deleted = _field(response, "deleted")
    if not isinstance(deleted, int):
        raise ValueError("`deleted` must be an integer")
    return deleted


def _memory_body(item: MemoryInput) -> Dict[str, Any]:
    if isinstance(item, str):
        return {"text": item}
    body: Dict[str, Any] = {"text": item["text"]}
    if item.get("metadata") is not None:
        body["metadata"] = dict(item["metadata"])
    for name in ("ttl_seconds", "duplicate_threshold"):
        if item.get(name) is not None:
            body[name] = item[name]
    if "expires_at" in item:
        # ``None`` here means "never", even where the server has a default.
        body["expires_at"] = item["expires_at"]
    return body


def _store(body: Dict[str, Any], idempotency_key: Optional[str]) -> _Call[List[str]]:
    headers = None if idempotency_key is None else {"Idempotency-Key": idempotency_key}
    # A store is only retried when it carries a key: without one, a retry
    # after a 503 that landed anyway would store the memory twice.
    return _Call(
        "POST",
        "/v1/memories",
        _parse_ids,
        body=body,
        headers=headers,
        retry=idempotency_key is not None,
    )


def _remember(
    text: str,
    metadata: Optional[Mapping[str, Any]],
    key: Optional[str],
    lifetime: Mapping[str, Any],
) -> _Call[List[str]]:
    item: Dict[str, Any] = {"text": text, "metadata": metadata}
    item.update({k: v for k, v in lifetime.items() if v is not _UNSET})
    return _store(_memory_body(item), key)


def _remember_many(items: Iterable[MemoryInput], key: Optional[str]) -> _Call[List[str]]:
    return _store({"memories": [_memory_body(i) for i in items]}, key)


def _recall(
    query: str,
    limit: Optional[int],
    min_score: Optional[float],
    filter: Optional[Filter],
    options: Mapping[str, Any],
) -> _Call[List[Memory]]:
    body: Dict[str, Any] = {"query": query}
    if limit is not None:
        body["limit"] = limit
    if min_score is not None:
        body["min_score"] = min_score
    if filter is not None:
        body["filter"] = dict(filter)
    body.update({k: v for k, v in options.items() if v is not None})
    return _Call(
        "POST",
        "/v1/memories/search",
        lambda r: _memories(_field(r, "results")),
        body=body,
    )


def _memory_path(id: str) -> str:
    if not id:
        raise ValueError("a memory id must not be empty")
    return "/v1/memories/" + quote(id, safe="")


def _get(id: str) -> _Call[Optional[Memory]]:
    return _Call(
        "GET",
        _memory_path(id),
        lambda r: None if r.status_code == 404 else Memory.from_json(_json(r)),
        not_found_ok=True,
    )


def _forget(id: str) -> _Call[bool]:
    return _Call(
        "DELETE", _memory_path(id), lambda r: r.status_code != 404, not_found_ok=True
    )


def _list(
    limit: Optional[int],
    cursor: Optional[str],
    filter: Optional[Filter] = None,
    created_after: Optional[int] = None,
    created_before: Optional[int] = None,
) -> _Call[Page]:
    params: _Params = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    if filter is not None:
        params["filter"] = json.dumps(dict(filter), separators=(",", ":"))
    if created_after is not None:
        params["created_after"] = created_after
    if created_before is not None:
        params["created_before"] = created_before
    return _Call("GET", "/v1/memories", _parse_page, params=params)


def _update(
    id: str,
    text: Optional[str],
    metadata: Optional[Mapping[str, Any]],
    replace_metadata: bool,
    expires_at: Any,
    ttl_seconds: Optional[int],
    if_version: Optional[int],
) -> _Call[Memory]:
    body: Dict[str, Any] = {}
    if text is not None:
        body["text"] = text
    if metadata is not None:
        body["metadata"] = dict(metadata)
        if replace_metadata:
            body["metadata_mode"] = "replace"
    if expires_at is not _UNSET:
        body["expires_at"] = expires_at
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    headers = None if if_version is None else {"If-Match": f'"{if_version}"'}
    return _Call(
        "PATCH",
        _memory_path(id),
        lambda r: Memory.from_json(_json(r)),
        body=body,
        headers=headers,
        # Sent again, an update applies its change again (same content, one
        # more version); one with a version to match would then fail on
        # its own first success.
        retry=if_version is None,
    )


def _erase_all() -> _Call[int]:
    return _Call("DELETE", "/v1/memories", _parse_deleted)


def _parse_erased(response: httpx.Response) -> Erased:
    receipt = _field(response, "receipt")
    if not isinstance(receipt, str):
        raise ValueError("`receipt` must be a string")
    return Erased(deleted=_parse_deleted(response), receipt=receipt)


def _erase_all_receipt() -> _Call[Erased]:
    return _Call("DELETE", "/v1/memories", _parse_erased)


def _parse_access_log(response: httpx.Response) -> AccessLog:
    entries = _field(response, "entries")
    if not isinstance(entries, list):
        raise ValueError("`entries` must be a list")
    next_ = _json(response).get("next")
    if next_ is not None and not isinstance(next_, int):
        raise ValueError("`next` must be an integer or absent")
    return AccessLog(entries=[AccessEntry.from_json(e) for e in entries], next=next_)


def _access_log(
    limit: Optional[int], before: Optional[int], since: Optional[int], until: Optional[int]
) -> _Call[AccessLog]:
    params: _Params = {}
    for name, value in (("limit", limit), ("before", before), ("since", since), ("until", until)):
        if value is not None:
            params[name] = value
    return _Call("GET", "/v1/access-log", _parse_access_log, params=params)


def _export() -> _Call[List[Memory]]:
    return _Call(
        "GET", "/v1/memories/export", lambda r: _memories(_field(r, "memories"))
    )


def _embed(texts: Union[str, Sequence[str]]) -> _Call[List[List[float]]]:
    inputs = [texts] if isinstance(texts, str) else [str(t) for t in texts]
    return _Call(
        "POST",
        "/v1/embeddings",
        _parse_embeddings,
        body={"input": inputs, "encoding_format": "float"},
    )


class _Settings:
    """What both clients share: headers and the retry rule."""

    def __init__(
        self, token: str, max_retries: int, max_retry_wait: float
    ) -> None:
        if not token:
            raise ValueError("a bearer token is required")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": f"cordon-client/{__version__}",
        }
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait

    def finish(
        self, call: _Call[T], response: httpx.Response, attempt: int
    ) -> Union[T, _Retry]:
        """The call's result, or a :class:`_Retry` saying when to send it again.

        Raises :class:`CordonError` for an error that is not retried.
        """
        status = response.status_code
        if status < 400 or (status == 404 and call.not_found_ok):
            try:
                return call.parse(response)
            except (KeyError, TypeError, ValueError) as e:
                raise CordonError(status, "invalid_response", str(e)) from e
        error = CordonError.from_response(response)
        if (
            call.retry
            and status in _RETRY_STATUSES
            and error.retry_after is not None
            and error.retry_after <= self.max_retry_wait
            and attempt < self.max_retries
        ):
            return _Retry(error.retry_after)
        raise error


def _base_url(url: str) -> str:
    if not url:
        raise ValueError("base_url is required")
    return url.rstrip("/")


class Cordon:
    """A synchronous client for one user of a Cordon server.

    The user is whoever ``token`` (a JWT from your identity provider) names;
    the client never sends a user id. Use it as a context manager, or call
    :meth:`close`, to release its connections.

    Retries: an answer of 429 or 503 that carries ``Retry-After`` (at most
    ``max_retry_wait`` seconds) is retried after that wait, up to
    ``max_retries`` times, for the calls that are safe to repeat: every read,
    search, delete, erase and embedding, and a store that carries an
    ``idempotency_key``. A store without a key is never retried. Set
    ``max_retries=0`` to turn retrying off.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: Union[float, httpx.Timeout] = DEFAULT_TIMEOUT,
        transport: Optional[httpx.BaseTransport] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
    ) -> None:
        self._settings = _Settings(token, max_retries, max_retry_wait)
        self._http = httpx.Client(
            base_url=_base_url(base_url),
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
        )

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            response = self._http.request(
                call.method,
                call.path,
                json=call.body,
                params=call.params,
                headers=call.headers,
            )
            outcome = self._settings.finish(call, response, attempt)
            if not isinstance(outcome, _Retry):
                return outcome
            attempt += 1
            time.sleep(outcome.delay)

    def remember(
        self,
        text: str,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        idempotency_key: Optional[str] = None,
        ttl_seconds: Optional[int] = None,
        expires_at: Any = _UNSET,
        duplicate_threshold: Optional[float] = None,
    ) -> str:
        """Stores one memory and returns its id.

        With ``idempotency_key`` (e.g. a UUID made once per logical write), a
        repeat of the same store returns the same id and stores nothing new.
        ``ttl_seconds`` or ``expires_at`` (Unix ms; ``None`` for never) make it
        expire. With ``duplicate_threshold`` (cosine, e.g. 0.95), a text that
        near-duplicates one of the user's memories is not stored again, and
        the existing memory's id is returned.
        """
        lifetime = {
            "ttl_seconds": ttl_seconds,
            "expires_at": expires_at,
            "duplicate_threshold": duplicate_threshold,
        }
        return self._send(_remember(text, metadata, idempotency_key, lifetime))[0]

    def remember_many(
        self, items: Iterable[MemoryInput], *, idempotency_key: Optional[str] = None
    ) -> List[str]:
        """Stores several memories in one request; their ids, in order."""
        return self._send(_remember_many(items, idempotency_key))

    def recall(
        self,
        query: str,
        *,
        limit: Optional[int] = None,
        min_score: Optional[float] = None,
        filter: Optional[Filter] = None,
        created_after: Optional[int] = None,
        created_before: Optional[int] = None,
        mode: Optional[str] = None,
    ) -> List[Memory]:
        """The memories closest in meaning to ``query``, best first, with scores.

        ``filter`` narrows by metadata (see :data:`Filter`);
        ``created_after``/``created_before`` by the time stored (Unix ms).
        ``mode`` is ``"hybrid"``, ``"semantic"`` or ``"keyword"`` (the
        server's default when ``None``).
        """
        options = {"created_after": created_after, "created_before": created_before, "mode": mode}
        return self._send(_recall(query, limit, min_score, filter, options))

    def get(self, id: str) -> Optional[Memory]:
        """One memory, or ``None`` if the user has none with this id."""
        return self._send(_get(id))

    def forget(self, id: str) -> bool:
        """Deletes one memory; ``False`` if the user had none with this id."""
        return self._send(_forget(id))

    def list(
        self,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        *,
        filter: Optional[Filter] = None,
        created_after: Optional[int] = None,
        created_before: Optional[int] = None,
    ) -> Page:
        """One page of the user's memories; pass ``next_cursor`` on as ``cursor``
        (with the same ``filter`` and time bounds)."""
        return self._send(_list(limit, cursor, filter, created_after, created_before))

    def update(
        self,
        id: str,
        *,
        text: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        replace_metadata: bool = False,
        expires_at: Any = _UNSET,
        ttl_seconds: Optional[int] = None,
        if_version: Optional[int] = None,
    ) -> Memory:
        """Changes one memory in place and returns it as updated.

        ``metadata`` merges (a key set to ``None`` is removed) unless
        ``replace_metadata``. ``expires_at`` (Unix ms, or ``None`` for never)
        or ``ttl_seconds`` set a new expiry. With ``if_version``, the update
        applies only if the memory is still at that version, else
        :class:`CordonError` with status 412 and code ``precondition_failed``.
        A memory the user does not have raises status 404.
        """
        return self._send(
            _update(id, text, metadata, replace_metadata, expires_at, ttl_seconds, if_version)
        )

    def iter_all(self, *, page_size: Optional[int] = None) -> Iterator[Memory]:
        """Every memory of the user, page by page."""
        cursor: Optional[str] = None
        while True:
            page = self.list(limit=page_size, cursor=cursor)
            yield from page.memories
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def erase_all(self) -> int:
        """Deletes every memory of the user; how many there were."""
        return self._send(_erase_all())

    def erase_all_receipt(self) -> Erased:
        """Deletes every memory of the user; how many, and the server's signed receipt."""
        return self._send(_erase_all_receipt())

    def access_log(
        self,
        limit: Optional[int] = None,
        before: Optional[int] = None,
        since: Optional[int] = None,
        until: Optional[int] = None,
    ) -> AccessLog:
        """A page of the user's own access log, newest first (``since`` and
        ``until`` in milliseconds since the epoch; ``before`` is a page's ``next``)."""
        return self._send(_access_log(limit, before, since, until))

    def export(self) -> List[Memory]:
        """Every memory of the user, in one request."""
        return self._send(_export())

    def embed(self, texts: Union[str, Sequence[str]]) -> List[List[float]]:
        """The server's embedding of each text (384 floats each), in order."""
        return self._send(_embed(texts))

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def __enter__(self) -> Cordon:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class AsyncCordon:
    """The asynchronous twin of :class:`Cordon`: the same methods, awaited
    (``iter_all`` is an async iterator), and the same retry rule."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: Union[float, httpx.Timeout] = DEFAULT_TIMEOUT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
    ) -> None:
        self._settings = _Settings(token, max_retries, max_retry_wait)
        self._http = httpx.AsyncClient(
            base_url=_base_url(base_url),
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
        )

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            response = await self._http.request(
                call.method,
                call.path,
                json=call.body,
                params=call.params,
                headers=call.headers,
            )
            outcome = self._settings.finish(call, response, attempt)
            if not isinstance(outcome, _Retry):
                return outcome
            attempt += 1
            await asyncio.sleep(outcome.delay)

    async def remember(
        self,
        text: str,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        idempotency_key: Optional[str] = None,
        ttl_seconds: Optional[int] = None,
        expires_at: Any = _UNSET,
        duplicate_threshold: Optional[float] = None,
    ) -> str:
        """See :meth:`Cordon.remember`."""
        lifetime = {
            "ttl_seconds": ttl_seconds,
            "expires_at": expires_at,
            "duplicate_threshold": duplicate_threshold,
        }
        return (await self._send(_remember(text, metadata, idempotency_key, lifetime)))[0]

    async def remember_many(
        self, items: Iterable[MemoryInput], *, idempotency_key: Optional[str] = None
    ) -> List[str]:
        """See :meth:`Cordon.remember_many`."""
        return await self._send(_remember_many(items, idempotency_key))

    async def recall(
        self,
        query: str,
        *,
        limit: Optional[int] = None,
        min_score: Optional[float] = None,
        filter: Optional[Filter] = None,
        created_after: Optional[int] = None,
        created_before: Optional[int] = None,
        mode: Optional[str] = None,
    ) -> List[Memory]:
        """See :meth:`Cordon.recall`."""
        options = {"created_after": created_after, "created_before": created_before, "mode": mode}
        return await self._send(_recall(query, limit, min_score, filter, options))

    async def get(self, id: str) -> Optional[Memory]:
        """See :meth:`Cordon.get`."""
        return await self._send(_get(id))

    async def forget(self, id: str) -> bool:
        """See :meth:`Cordon.forget`."""
        return await self._send(_forget(id))

    async def list(
        self,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        *,
        filter: Optional[Filter] = None,
        created_after: Optional[int] = None,
        created_before: Optional[int] = None,
    ) -> Page:
        """See :meth:`Cordon.list`."""
        return await self._send(_list(limit, cursor, filter, created_after, created_before))

    async def update(
        self,
        id: str,
        *,
        text: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        replace_metadata: bool = False,
        expires_at: Any = _UNSET,
        ttl_seconds: Optional[int] = None,
        if_version: Optional[int] = None,
    ) -> Memory:
        """See :meth:`Cordon.update`."""
        return await self._send(
            _update(id, text, metadata, replace_metadata, expires_at, ttl_seconds, if_version)
        )

    async def iter_all(self, *, page_size: Optional[int] = None) -> AsyncIterator[Memory]:
        """See :meth:`Cordon.iter_all`."""
        cursor: Optional[str] = None
        while True:
            page = await self.list(limit=page_size, cursor=cursor)
            for memory in page.memories:
                yield memory
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def erase_all(self) -> int:
        """See :meth:`Cordon.erase_all`."""
        return await self._send(_erase_all())

    async def erase_all_receipt(self) -> Erased:
        """See :meth:`Cordon.erase_all_receipt`."""
        return await self._send(_erase_all_receipt())

    async def access_log(
        self,
        limit: Optional[int] = None,
        before: Optional[int] = None,
        since: Optional[int] = None,
        until: Optional[int] = None,
    ) -> AccessLog:
        """See :meth:`Cordon.access_log`."""
        return await self._send(_access_log(limit, before, since, until))

    async def export(self) -> List[Memory]:
        """See :meth:`Cordon.export`."""
        return await self._send(_export())

    async def embed(self, texts: Union[str, Sequence[str]]) -> List[List[float]]:
        """See :meth:`Cordon.embed`."""
        return await self._send(_embed(texts))

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCordon:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()
