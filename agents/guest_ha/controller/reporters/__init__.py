"""Fault reporters: each turns a guest-ha event into a call on one system.

A reporter raises :class:`ReporterError`; ``retryable`` says whether trying
again later can help (the dispatcher backs off) or not (the delivery is marked
failed and logged). Reporters must be idempotent where the target allows it,
since a controller that dies between the call and its bookkeeping will have
the call repeated.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol


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


class HttpReporter:
    """Shared plumbing of reporters that POST JSON to an OpenStack service
    found in the Keystone catalog (keystoneauth1 session)."""

    name = ""
    service_type = ""
    service_label = ""

    def __init__(
        self,
        session: Any,
        *,
        region: Optional[str] = None,
        interface: str = "public",
        timeout: float = 10.0,
        endpoint_override: Optional[str] = None,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.endpoint_filter = {
            "service_type": self.service_type,
            "interface": interface,
            "region_name": region,
        }
        self.endpoint_override = endpoint_override or None

    def post(self, path: str, body: Dict[str, Any]) -> Any:
        """POST ``body``; return the response (any status). Unreachable: retryable error."""
        try:
            return self.session.post(
                path,
                json=body,
                endpoint_filter=self.endpoint_filter,
                endpoint_override=self.endpoint_override,
                raise_exc=False,
                timeout=self.timeout,
            )
        except Exception as exc:  # connection refused, auth failure, catalog missing...
            raise ReporterError(f"{self.service_label} unreachable: {exc}") from None
