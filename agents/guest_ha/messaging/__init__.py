"""Transport between guest-ha nodes: oslo.messaging over RabbitMQ (see docs/messaging.md).

- ``guest_ha.messaging.options``: ``[guest_ha]`` options on the global ``cfg.CONF``,
  ``configure()``, and the ``oslo.config.opts`` list functions.
- ``guest_ha.messaging.rpc``: ``ControllerClient``, ``ComputeClient``,
  ``serve_controller``/``serve_compute``, ``notifier``/``publish`` and the
  ``MessagingError`` family.
- ``guest_ha.messaging.payloads``: the RPC method names and payload shapes.

Importing ``options`` or ``rpc`` (or a name this package re-exports from them)
imports oslo.messaging; ``payloads`` does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guest_ha.messaging.options import (
        configure,
        list_compute_opts,
        list_controller_opts,
        register_opts,
    )
    from guest_ha.messaging.rpc import (
        ComputeClient,
        ControllerClient,
        MessagingError,
        RemoteError,
        RpcTimeout,
        TransportUnavailable,
        get_notification_transport,
        get_transport,
        notifier,
        publish,
        serve_compute,
        serve_controller,
        stop_server,
    )

_OPTIONS = ("configure", "list_compute_opts", "list_controller_opts", "register_opts")


def __getattr__(name: str) -> Any:
    """Load ``options``/``rpc`` (and oslo.messaging) on first use: ``payloads``
    alone is importable without oslo.messaging installed."""
    if name in __all__:
        module = "options" if name in _OPTIONS else "rpc"
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ComputeClient",
    "ControllerClient",
    "MessagingError",
    "RemoteError",
    "RpcTimeout",
    "TransportUnavailable",
    "configure",
    "get_notification_transport",
    "get_transport",
    "list_compute_opts",
    "list_controller_opts",
    "notifier",
    "publish",
    "register_opts",
    "serve_compute",
    "serve_controller",
    "stop_server",
]
