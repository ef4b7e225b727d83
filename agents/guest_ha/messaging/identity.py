"""Who sent an RPC message, as the broker authenticated it (not as the body says).

RabbitMQ's *validated user-ID* feature: when a publisher sets the AMQP
``user_id`` message property, the broker checks it equals the user name the
connection authenticated with and closes the channel (``PRECONDITION_FAILED``)
otherwise; only a user tagged ``impersonator`` may set another name.  So a
``user_id`` that reaches a consumer was set by a connection holding that user's
password.

oslo.messaging sets no ``user_id`` and hands endpoints only the caller's
context dict, which the caller writes freely.  This module closes both gaps:

- ``stamp_user_id()`` makes every kombu publish of this process carry
  ``user_id`` = the user of the connection it goes out on (the broker then
  vouches for it);
- ``AuthenticatedDispatcher`` puts the broker-validated ``user_id`` of each
  incoming RPC message into the context under ``BROKER_USER`` (overwriting
  whatever the caller wrote there), so endpoint methods read
  ``sender_user(ctxt)``.  A message published without ``user_id`` has no
  ``BROKER_USER``.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Mapping, Optional

import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

#: Context key holding the broker-validated user of a message.
BROKER_USER = "guest_ha_broker_user"

_stamp_lock = threading.Lock()
_stamped = False


def _connection_user(producer: Any) -> Optional[str]:
    """User name the producer's kombu connection logged in with."""
    try:
        conn = producer.channel.connection.client
        return str(conn.info().get("userid") or "") or None
    except Exception:  # not a kombu/amqp connection (fake:// driver in unit tests)
        return None


def stamp_user_id() -> None:
    """Make every kombu publish of this process carry ``user_id`` (idempotent)."""
    global _stamped
    with _stamp_lock:
        if _stamped:
            return
        import kombu.messaging

        original = kombu.messaging.Producer.publish

        @functools.wraps(original)
        def publish(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
            if "user_id" not in kwargs:
                user = _connection_user(self)
                if user:
                    kwargs["user_id"] = user
            return original(self, body, *args, **kwargs)

        kombu.messaging.Producer.publish = publish  # type: ignore[method-assign]
        _stamped = True


def validated_user(incoming: Any) -> Optional[str]:
    """The broker-validated ``user_id`` of an incoming oslo.messaging message."""
    raw = getattr(getattr(incoming, "message", None), "_raw_message", None)
    properties = getattr(raw, "properties", None)
    if not isinstance(properties, Mapping):
        return None
    user = properties.get("user_id")
    if isinstance(user, bytes):
        user = user.decode("utf-8", "replace")
    return user if isinstance(user, str) and user else None


class AuthenticatedDispatcher(rpc_dispatcher.RPCDispatcher):
    """An RPC dispatcher that tells endpoints the broker-validated sender."""

    def dispatch(self, incoming: Any) -> Any:
        ctxt = dict(incoming.ctxt or {})
        ctxt.pop(BROKER_USER, None)  # never the caller's word
        user = validated_user(incoming)
        if user is not None:
            ctxt[BROKER_USER] = user
        incoming.ctxt = ctxt
        return super().dispatch(incoming)


def rpc_server(
    transport: oslo_messaging.Transport, target: oslo_messaging.Target, endpoints: Any
) -> Any:
    """``get_rpc_server`` with ``AuthenticatedDispatcher``."""
    from oslo_messaging.rpc.server import RPCServer

    dispatcher = AuthenticatedDispatcher(
        list(endpoints), None, oslo_messaging.DefaultRPCAccessPolicy
    )
    return RPCServer(transport, target, dispatcher)


def sender_user(ctxt: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The broker user that sent the message whose context is ``ctxt``."""
    user = (ctxt or {}).get(BROKER_USER)
    return user if isinstance(user, str) else None
