"""Fault reporters: each turns a guest-ha event into a call on one system.

A reporter raises :class:`ReporterError`; ``retryable`` says whether trying
again later can help (the dispatcher backs off) or not (the delivery is marked
failed and logged). Reporters must be idempotent where the target allows it,
since a controller that dies between the call and its bookkeeping will have
the call repeated.
"""

from __future__ import annotations

from typing import Any, Dict, Protocol


class ReporterError(Exception):
    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Reporter(Protocol):
    name: str

    def report(self, event: Dict[str, Any]) -> None: ...


def http_error(status: int, what: str) -> ReporterError:
    """Classify an HTTP answer: 5xx, 408 and 429 are worth retrying; other 4xx are not."""
    retryable = status >= 500 or status in (408, 429)
    return ReporterError(f"{what}: HTTP {status}", retryable=retryable)
