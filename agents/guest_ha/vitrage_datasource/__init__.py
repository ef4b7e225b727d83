"""guest-ha's Vitrage datasource (the HLD's "Vitrage's Data Source API").

The controller's ``vitrage`` reporter posts Doctor southbound events
(``POST /v1/event``) with one of two types:

- :data:`FAULT_EVENT` (``guest_ha.instance.fault``): a guest fault
  (heartbeat lost, unhealthy, restart timeout, crash);
- :data:`RECOVERED_EVENT` (``guest_ha.instance.recovered``): heartbeats are
  healthy again.

``details`` carries ``instance_id`` (the Nova server uuid), ``kind``,
``reason``, ``compute_host``, ``severity`` and ``status`` (``fault`` or
``ok``; never ``up``/``down``, which vitrage-api would re-route to the stock
``doctor`` datasource, and that one attaches to hosts only).

vitrage-api re-publishes each event on the ``vitrage_notifications`` topic
with the event type unchanged.  vitrage-graph hands it to this datasource
(push mode), which raises or refreshes the alarm :data:`ALARM_NAME`
(``guest_ha.heartbeat``, type :data:`DATASOURCE`) **on** the ``nova.instance``
vertex with that uuid, and deletes it on recovery.  A Vitrage template can
then ``mark_down`` the instance or raise a deduced alarm (see
``docs/vitrage.md``).

Loading it (``vitrage.conf``)::

    [datasources]
    path = vitrage.datasources,guest_ha.vitrage_datasource
    types = nova.host,nova.instance,nova.zone,guest_ha

and copy ``datasources_values/guest_ha.yaml`` (see :func:`values_file`) into
``[entity_graph] datasources_values_dir``.

This module imports nothing from Vitrage, so the controller (and anything
else) can use the constants below; the ``guest_ha`` sub-package holds the
driver and transformer and runs inside Vitrage's own environment.
"""

from __future__ import annotations

import os

#: Datasource name: the entry in ``[datasources] types``, the ``vitrage_type``
#: of the alarms and the name of the ``datasources_values`` file.
DATASOURCE = "guest_ha"
#: Event types posted to ``/v1/event``.
FAULT_EVENT = "guest_ha.instance.fault"
RECOVERED_EVENT = "guest_ha.instance.recovered"
EVENT_TYPES = (FAULT_EVENT, RECOVERED_EVENT)
#: Name of the alarm raised on the instance.
ALARM_NAME = "guest_ha.heartbeat"
#: ``details`` keys.
DETAIL_INSTANCE = "instance_id"
DETAIL_STATUS = "status"
STATUS_FAULT = "fault"
STATUS_OK = "ok"
#: Vitrage's event time format (``EventProperties.TIME_FORMAT``).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


def values_dir() -> str:
    """Folder holding ``guest_ha.yaml`` for ``[entity_graph] datasources_values_dir``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasources_values")


def values_file() -> str:
    """Path of ``datasources_values/guest_ha.yaml`` (alarm severities)."""
    return os.path.join(values_dir(), DATASOURCE + ".yaml")
