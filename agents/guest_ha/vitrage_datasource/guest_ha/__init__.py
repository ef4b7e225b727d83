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
]
