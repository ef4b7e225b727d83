"""oslo.config options of the guest-ha transport, registered on the global ``cfg.CONF``.

oslo.messaging 18.3.1 registers its tracing options (``[oslo_messaging_tracing]``)
on the global ``cfg.CONF`` only, so a private ``ConfigOpts()`` makes every RPC
fail with ``NoSuchOptError``: everything here uses ``cfg.CONF``.

- ``[guest_ha]``: the options below (``register_opts()``).
- ``[DEFAULT]`` ``transport_url``, ``rpc_response_timeout``, ...,
  ``[oslo_messaging_rabbit]`` and ``[oslo_messaging_notifications]``: oslo.messaging's
  own, registered by oslo.messaging when a transport is created (and by
  ``configure()`` up front, so they can be overridden before that).

``list_compute_opts()`` / ``list_controller_opts()`` are the ``oslo.config.opts``
entry points ``guest_ha.compute`` and ``guest_ha.controller``; each includes
oslo.messaging's option lists (RabbitMQ only: the Kafka group is left out), so
``oslo-config-generator --namespace guest_ha.compute`` alone gives a complete
sample.
"""

from __future__ import annotations

import copy
import socket
import threading
from typing import List, Optional, Sequence, Tuple

import oslo_messaging.opts
from oslo_config import cfg

GROUP = "guest_ha"
PROJECT = "guest-ha"

_group = cfg.OptGroup(
    GROUP,
    title="guest-ha transport",
    help="How guest-ha compute agents and controllers reach each other over "
    "oslo.messaging (RabbitMQ).",
)

common_opts = [
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<hostname of this machine>",
        help="Name of this node on the bus. A compute agent listens on "
        "<compute_topic_prefix>.<host>, so it must match the name "
        "controllers use for the hypervisor (Nova's compute host).",
    ),
    cfg.StrOpt(
        "controller_topic",
        default="guest_ha_controller",
        help="RPC topic that every controller consumes. Calls to it are "
        "shared among the running controllers: each is handled by one.",
    ),
    cfg.StrOpt(
        "compute_topic_prefix",
        default="guest_ha_compute",
        help="RPC topic of the compute agents. Each agent consumes the "
        "queue <prefix>.<host> (messages for that host only) and the "
        "fanout exchange <prefix>_fanout (messages for all agents).",
    ),
    cfg.FloatOpt(
        "rpc_timeout_s",
        default=5.0,
        min=0.1,
        help="Seconds an RPC call (for example a fault report) waits "
        "for the answer before it fails with RpcTimeout.",
    ),
    cfg.IntOpt(
        "rpc_connect_retries",
        default=1,
        min=0,
        help="How many times an RPC call or cast retries connecting to "
        "the broker before it fails with TransportUnavailable. "
        "0 = one attempt. Never infinite: callers spool and retry.",
    ),
    cfg.StrOpt(
        "server_group_transport",
        default="datagrams",
        choices=[
            (
                "datagrams",
                "plain AMQP on the same broker and credentials: no publisher "
                "confirms, no thread hand-offs (guest_ha.messaging.datagrams)",
            ),
            ("rpc", "oslo.messaging casts, like every other message"),
        ],
        help="How best-effort server-group traffic (sg_relay from compute agents, "
        "sg_deliver from controllers) travels. Set the same value on every node. "
        "Fault reports always use oslo.messaging RPC.",
    ),
]

controller_opts = [
    cfg.IntOpt(
        "notification_retries",
        default=1,
        min=0,
        help="How many times a notification retries connecting to the "
        "broker before it fails (never infinite).",
    ),
]

_register_lock = threading.Lock()
_configure_lock = threading.Lock()


def register_opts(conf: Optional[cfg.ConfigOpts] = None) -> cfg.ConfigOpts:
    """Register the ``[guest_ha]`` options on ``conf`` (default ``cfg.CONF``). Idempotent."""
    conf = cfg.CONF if conf is None else conf
    with _register_lock:
        conf.register_group(_group)
        # register_opts ignores an identical option that is already registered.
        conf.register_opts(common_opts, group=_group)
        conf.register_opts(controller_opts, group=_group)
    return conf


def _oslo_messaging_opts() -> List[Tuple[Optional[str], list]]:
    return [
        (group, opts)
        for group, opts in oslo_messaging.opts.list_opts()
        if group != "oslo_messaging_kafka"
    ]


def list_compute_opts() -> List[Tuple[Optional[str], list]]:
    """``[(group, opts)]`` for the compute agent's sample config."""
    return [(GROUP, copy.deepcopy(common_opts)), *_oslo_messaging_opts()]


def list_controller_opts() -> List[Tuple[Optional[str], list]]:
    """``[(group, opts)]`` for the controller's sample config."""
    return [(GROUP, copy.deepcopy(common_opts + controller_opts)), *_oslo_messaging_opts()]


def _is_parsed(conf: cfg.ConfigOpts) -> bool:
    # oslo.config has no public "was __call__ done" flag; ``_args`` is None until it is.
    return getattr(conf, "_args", None) is not None


def configure(
    transport_url: Optional[str] = None,
    args: Optional[Sequence[str]] = None,
    config_files: Optional[Sequence[str]] = None,
) -> cfg.ConfigOpts:
    """Initialise the global ``cfg.CONF`` once, for services and tests alike.

    - registers ``[guest_ha]`` and oslo.messaging's options;
    - parses ``args`` (default ``[]``: never ``sys.argv``) and ``config_files``
      (default none: no search of ``/etc/guest-ha``) with project ``guest-ha``,
      only if nobody has parsed ``cfg.CONF`` yet. Parsing again would clear every
      override other code has set, so later calls skip it;
    - ``transport_url``, when given, is set as an override (each call may change it).

    Returns ``cfg.CONF``.
    """
    conf = register_opts(cfg.CONF)
    with _configure_lock:
        for group, opts in oslo_messaging.opts.list_opts():
            if group != "oslo_messaging_kafka":
                conf.register_opts(opts, group=group)
        if not _is_parsed(conf):
            conf(
                args=list(args or []),
                project=PROJECT,
                default_config_files=list(config_files or []),
            )
        if transport_url is not None:
            conf.set_override("transport_url", transport_url)
    return conf


__all__ = [
    "GROUP",
    "PROJECT",
    "common_opts",
    "configure",
    "controller_opts",
    "list_compute_opts",
    "list_controller_opts",
    "register_opts",
]
