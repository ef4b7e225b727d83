"""The ``guest_ha`` Vitrage datasource: options read by vitrage-graph.

Vitrage imports ``<path>.<type>`` for every entry of ``[datasources] types``
and registers its ``OPTS`` in the group named after the type, so with
``path = vitrage.datasources,guest_ha.vitrage_datasource`` and ``guest_ha`` in
``types`` this module is found.  It runs inside Vitrage's environment.
"""

from oslo_config import cfg
from vitrage.common.constants import DatasourceOpts, UpdateMethod

from guest_ha.vitrage_datasource import DATASOURCE

__all__ = ["DATASOURCE", "OPTS"]

OPTS = [
    cfg.StrOpt(
        DatasourceOpts.TRANSFORMER,
        default="guest_ha.vitrage_datasource.guest_ha.transformer.GuestHaTransformer",
        help="guest-ha transformer class path",
        required=True,
    ),
    cfg.StrOpt(
        DatasourceOpts.DRIVER,
        default="guest_ha.vitrage_datasource.guest_ha.driver.GuestHaDriver",
        help="guest-ha driver class path",
        required=True,
    ),
    cfg.StrOpt(
        DatasourceOpts.UPDATE_METHOD,
        default=UpdateMethod.PUSH,
        help="guest-ha events are pushed (POST /v1/event); keep 'push'.",
        required=True,
    ),
    cfg.StrOpt(
        "controller_url",
        default="",
        help="guest-ha controller's status URL ([controller] status_listen), e.g. "
        "http://ctl:9797. vitrage-graph reads the active faults there (GET "
        "/v1/active-faults) at start-up and every snapshots_interval, so alarms "
        "survive a vitrage-graph restart. Empty: alarms come from events only.",
    ),
    cfg.FloatOpt(
        "controller_timeout",
        default=10.0,
        min=0.1,
        help="Timeout in seconds of the request to controller_url.",
    ),
]
