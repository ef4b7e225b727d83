"""Transport between guest-ha nodes: oslo.messaging over RabbitMQ (see docs/messaging.md).

- ``guest_ha.messaging.options``: ``[guest_ha]`` options on the global ``cfg.CONF``,
  ``configure()``, and the ``oslo.config.opts`` list functions.
- ``guest_ha.messaging.rpc``: ``ControllerClient``, ``ComputeClient``,
  ``serve_controller``/``serve_compute``, ``notifier``/``publish`` and the
  ``MessagingError`` family.

Importing this package imports oslo.messaging.
"""

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
