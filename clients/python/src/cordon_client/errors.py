"""The one exception the client raises for an answer that is not a success."""

from __future__ import annotations

import email.utils
import time
from typing import Any, Optional

import httpx

__all__ = ["CordonError"]


class CordonError(Exception):
    """The server refused a request, or answered with something unreadable.

    ``status`` is the HTTP status, ``code`` and ``message`` come from the
    server's ``{"error": {"code": ..., "message": ...}}`` body, and
    ``retry_after`` is the ``Retry-After`` header in seconds (``None`` when
    the answer has none). An answer that is not in that shape (from a proxy,
    say) gets the code ``"http_error"``; a success whose body cannot be read
    gets ``"invalid_response"``.

    Network failures are not wrapped: they surface as ``httpx`` exceptions
    (``httpx.TransportError`` and its subclasses).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"CordonError(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, retry_after={self.retry_after!r})"
        )

    @classmethod
    def from_response(cls, response: httpx.Response) -> CordonError:
        """The error that a non-success ``response`` stands for."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        code, message = "http_error", response.reason_phrase or "HTTP error"
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            code = error["code"]
            if isinstance(error.get("message"), str):
                message = error["message"]
        elif response.text:
            message = response.text[:200]
        return cls(response.status_code, code, message, retry_after)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds from now: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
