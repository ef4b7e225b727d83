"""Wiring: the router built from the controller's options, Nova's notification listener."""

from __future__ import annotations

import logging
import os
import uuid as uuidlib
from typing import Any, Dict, List

from ...messaging.payloads import SG_DELIVER, SG_RELAY, SG_RELAY_BATCH, SG_SYNC, SgDelivery
from .membership import (
    GROUP_EVENTS,
    INSTANCE_EVENTS,
)
from .router import ServerGroupRouter
from .sources import FileSource, NovaSource

LOG = logging.getLogger("guest_ha.controller.sg")


class NovaNotificationEndpoint:
    """oslo.messaging notification endpoint for Nova's versioned notifications."""

    def __init__(self, router: ServerGroupRouter) -> None:
        self.router = router
        import oslo_messaging

        self.filter_rule = oslo_messaging.NotificationFilter(
            event_type=r"^(instance\.|server_group\.)"
        )

    def _handle(self, event_type: str, payload: Any) -> None:
        if event_type in INSTANCE_EVENTS or event_type in GROUP_EVENTS:
            try:
                self.router.nova_notification(event_type, payload)
            except Exception:  # never let one bad notification stop the listener
                LOG.exception("Nova notification %s not applied", event_type)

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any):
        self._handle(event_type, payload)

    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any):
        # instance.*.error notifications carry the instance as it is after the failure.
        self._handle(event_type.rsplit(".error", 1)[0] + ".end", payload)


def start_nova_listener(
    router: ServerGroupRouter,
    transport: Any,
    *,
    topic: str,
    exchange: str,
    pool: str,
) -> Any:
    """Listen to ``topic`` on ``exchange`` with a pool of its own; returns the listener."""
    import oslo_messaging

    listener = oslo_messaging.get_notification_listener(
        transport,
        [oslo_messaging.Target(topic=topic, exchange=exchange)],
        [NovaNotificationEndpoint(router)],
        pool=pool,
    )
    listener.start()

    class _Stopper:
        def stop(self) -> None:
            listener.stop()
            listener.wait()

    router.listeners.append(_Stopper())
    return listener


def build_router(conf: Any, transport: Any) -> ServerGroupRouter:
    """The router of ``[server_groups]``, wired to compute hosts and other controllers.

    Starts nothing; ``ServerGroupRouter.start()`` loads membership and
    ``start_listeners()`` starts the Nova notification listener.
    """
    import oslo_messaging

    from ...messaging.rpc import ComputeClient

    opts = conf.server_groups
    if opts.membership == "nova":
        from ...cloud_session import session_from_clouds_yaml

        source: Any = NovaSource(
            session_from_clouds_yaml(opts.clouds_yaml, opts.cloud),
            region=opts.region,
            interface=opts.interface,
        )
    else:
        source = FileSource(opts.groups_file)
    host = conf.guest_ha.host
    computes = ComputeClient(transport, host)
    controller_id = f"{host}:{os.getpid()}:{uuidlib.uuid4().hex[:8]}"
    peers = oslo_messaging.get_rpc_client(
        transport,
        oslo_messaging.Target(topic=conf.guest_ha.controller_topic),
        retry=conf.guest_ha.rpc_connect_retries,
    ).prepare(fanout=True)

    sender: Any = None
    if conf.guest_ha.server_group_transport == "datagrams":
        from ...messaging.datagrams import Datagrams

        datagrams = Datagrams(conf)
        sender = datagrams.sender()

        def cast(target_host: str, deliveries: List[SgDelivery]) -> None:
            queue = datagrams.compute_queue(target_host)
            sender.send(queue, SG_DELIVER, {"deliveries": deliveries})

    else:

        def cast(target_host: str, deliveries: List[SgDelivery]) -> None:
            computes.cast_to_host(target_host, SG_DELIVER, deliveries=deliveries)

    def sync(ops: List[Dict[str, Any]]) -> None:
        peers.cast({"host": host}, SG_SYNC, origin=controller_id, ops=ops)

    router = ServerGroupRouter(
        source,
        cast,
        sync=sync,
        cache_ttl_s=opts.cache_ttl_s,
        controller_id=controller_id,
        cast_interval_s=opts.cast_interval_ms / 1000.0,
    )
    if sender is not None:
        router.listeners.append(sender)  # closed once the outbox has flushed
    return router


def start_datagram_receiver(router: ServerGroupRouter, conf: Any, endpoint: Any) -> None:
    """Consume the compute agents' ``sg_relay`` datagrams (``[guest_ha]
    server_group_transport = datagrams``) into ``endpoint``, which checks their
    broker-validated sender as it does for RPC."""
    if conf.guest_ha.server_group_transport != "datagrams":
        return
    from ...messaging.datagrams import Datagrams

    datagrams = Datagrams(conf)
    receiver = datagrams.receiver(
        datagrams.controller_queue, endpoint, [SG_RELAY, SG_RELAY_BATCH], name="sg-relays"
    ).start()
    router.listeners.append(receiver)


def start_listeners(router: ServerGroupRouter, conf: Any) -> None:
    """Start the Nova versioned notification listener (nova membership only)."""
    if router.mode != "nova" or not conf.server_groups.listen_notifications:
        return
    from ...messaging.rpc import get_notification_transport

    opts = conf.server_groups
    url = (
        opts.notification_transport_url
        or conf.oslo_messaging_notifications.transport_url
        or conf.transport_url
    )
    transport = get_notification_transport(url)
    start_nova_listener(
        router,
        transport,
        topic=opts.notification_topic,
        exchange=opts.notification_exchange,
        pool=opts.notification_pool,
    )
    LOG.info(
        "listening to Nova versioned notifications on %s/%s (pool %s)",
        opts.notification_exchange,
        opts.notification_topic,
        opts.notification_pool,
    )
