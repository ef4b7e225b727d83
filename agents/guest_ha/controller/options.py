"""oslo.config options of the controller server (exported for oslo-config-generator)."""

from __future__ import annotations

from typing import List, Optional, Tuple

from oslo_config import cfg

from .origin import report_origin_opts

REPORTERS = ("log", "notification", "nova", "masakari", "vitrage")

controller_opts = [
    cfg.ListOpt(
        "reporters",
        default=["log"],
        item_type=cfg.types.String(choices=REPORTERS),
        help="Fault reporters to run, several at once. Every event is delivered to each "
        "of them exactly as it was received, retried with backoff on failure.",
    ),
    cfg.StrOpt(
        "database",
        default="/var/lib/guest-ha/controller.sqlite",
        help="Event store (de-duplication and delivery state): a SQLite file, or a "
        "PostgreSQL URL (postgresql+psycopg2://USER:PASSWORD@HOST/DB, through oslo.db) "
        "for controllers on separate hosts. Controllers that run active-active must "
        "share it.",
    ),
    cfg.IntOpt("dispatch_workers", default=4, min=1, help="Reporter delivery threads."),
    cfg.FloatOpt(
        "lease_s",
        default=60.0,
        min=1.0,
        help="How long a controller owns a delivery it is working on; if it dies, another "
        "controller takes the delivery over after this.",
    ),
    cfg.FloatOpt("retry_initial_s", default=0.5, min=0.01, help="First reporter retry delay."),
    cfg.FloatOpt("retry_max_s", default=30.0, min=0.1, help="Longest reporter retry delay."),
    cfg.StrOpt(
        "status_listen",
        default="127.0.0.1:9797",
        help="host:port of the HTTP endpoint serving /status (JSON) and /metrics "
        "(Prometheus); empty disables it.",
    ),
    cfg.ListOpt(
        "notification_topics",
        default=["notifications"],
        help="Topics of the notification reporter.",
    ),
]


def _credential_opts(service: str, clouds_help: str = "") -> list:
    """Where and how to reach an OpenStack service (keystoneauth1 via clouds.yaml)."""
    return [
        cfg.StrOpt(
            "clouds_yaml",
            default="/etc/guest-ha/clouds.yaml",
            help=clouds_help or f"clouds.yaml with the credentials used to call {service}.",
        ),
        cfg.StrOpt("cloud", default="guest-ha", help="Entry of clouds_yaml to use."),
        cfg.StrOpt("region", help=f"Region of the {service} endpoint."),
        cfg.StrOpt(
            "interface",
            default="public",
            choices=["public", "internal", "admin"],
            help="Endpoint interface.",
        ),
    ]


def _service_reporter_opts(service: str) -> list:
    return [
        *_credential_opts(service),
        cfg.StrOpt(
            "endpoint_override",
            help=(
                f"Call {service} at this URL instead of the one in the Keystone catalog "
                "(for example an internal load balancer), including the version path "
                "the catalog entry would have. Tokens still come from Keystone."
            ),
        ),
        cfg.FloatOpt(
            "timeout_s",
            default=10.0,
            min=0.1,
            help=f"HTTP timeout of one call to {service}; a timeout is retried.",
        ),
    ]


#: ``[reporter_nova]``: ``os-resetState`` calls (service type ``compute``).
nova_reporter_opts = [
    *_service_reporter_opts("Nova (service type compute)"),
    cfg.BoolOpt(
        "reset_on_recovery",
        default=False,
        help="Reset the server back to active when heartbeats recover.",
    ),
]


#: ``[reporter_vitrage]``: Doctor southbound events (``POST /v1/event``,
#: service type ``rca``) for the ``guest_ha`` Vitrage datasource.
vitrage_reporter_opts = _service_reporter_opts("Vitrage (service type rca)")
#: ``[reporter_masakari]``: VM notifications (``POST /v1/notifications``,
#: service type ``instance-ha``).
masakari_reporter_opts = _service_reporter_opts("Masakari (service type instance-ha)")


#: ``[server_groups]``: server group messaging (membership, routing, Nova
#: versioned notifications); see docs/server-groups.md.
server_groups_opts = [
    cfg.BoolOpt(
        "enabled",
        default=False,
        help="Route server group messages (broadcast, status, peer notifications) "
        "between compute agents. Off: sg_relay casts are dropped and logged.",
    ),
    cfg.StrOpt(
        "membership",
        default="nova",
        choices=[
            ("nova", "Nova server groups (Nova API + versioned notifications)"),
            ("file", "standalone: groups_file and the groups compute agents report"),
        ],
        help="Where server group membership and member state come from.",
    ),
    cfg.StrOpt(
        "groups_file",
        default="/etc/guest-ha/server-groups.yaml",
        help="membership=file: YAML 'groups: {name: [instance uuid, ...]}'. May be "
        "missing (groups then come from the compute agents' reports only); re-read "
        "every cache_ttl_s.",
    ),
    *_credential_opts(
        "compute",
        "membership=nova: clouds.yaml with admin credentials for the Nova API "
        "(all projects' server groups and servers).",
    ),
    cfg.FloatOpt(
        "cache_ttl_s",
        default=300.0,
        min=1.0,
        help="Full membership reload (Nova API or groups_file) every this many "
        "seconds; notifications keep the cache current in between. A failed "
        "reload is retried every 5 s.",
    ),
    cfg.IntOpt(
        "cast_interval_ms",
        default=3,
        min=0,
        max=1000,
        help="Casts of deliveries to one compute host start at least this many "
        "ms apart; deliveries arriving meanwhile wait and leave together in the "
        "next cast. A host that received nothing for that long gets its delivery "
        "at once, so this adds latency only under load, and caps the messages "
        "per second each compute agent receives at 1000/cast_interval_ms. "
        "0 = no pacing (deliveries queued while a cast is under way still leave "
        "together).",
    ),
    cfg.BoolOpt(
        "listen_notifications",
        default=True,
        help="membership=nova: listen to Nova's versioned notifications.",
    ),
    cfg.StrOpt(
        "notification_transport_url",
        secret=True,
        help="Broker of Nova's notifications (default: [oslo_messaging_notifications] "
        "transport_url, else [DEFAULT] transport_url).",
    ),
    cfg.StrOpt(
        "notification_topic",
        default="versioned_notifications",
        help="Topic of Nova's versioned notifications ([notifications] "
        "versioned_notifications_topics in nova.conf).",
    ),
    cfg.StrOpt(
        "notification_exchange",
        default="nova",
        help="Exchange Nova publishes on (Nova's control_exchange).",
    ),
    cfg.StrOpt(
        "notification_pool",
        default="guest-ha-controller",
        help="Listener pool: a queue of guest-ha's own, so other consumers of the "
        "topic (Ceilometer, ...) still get every notification. All controllers "
        "share it: each notification is handled by one of them, which tells the "
        "others.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> cfg.ConfigOpts:
    conf.register_opts(controller_opts, group="controller")
    conf.register_opts(nova_reporter_opts, group="reporter_nova")
    conf.register_opts(vitrage_reporter_opts, group="reporter_vitrage")
    conf.register_opts(masakari_reporter_opts, group="reporter_masakari")
    conf.register_opts(server_groups_opts, group="server_groups")
    conf.register_opts(report_origin_opts, group="report_origin")
    return conf


def list_opts() -> List[Tuple[Optional[str], list]]:
    return [
        ("controller", controller_opts),
        ("reporter_nova", nova_reporter_opts),
        ("reporter_vitrage", vitrage_reporter_opts),
        ("reporter_masakari", masakari_reporter_opts),
        ("server_groups", server_groups_opts),
        ("report_origin", report_origin_opts),
    ]
