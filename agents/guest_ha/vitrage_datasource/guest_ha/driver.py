"""Driver of the ``guest_ha`` datasource: accepts guest-ha events from
vitrage-api's ``vitrage_notifications`` topic and keeps one alarm per instance.

Events are pushed; ``enrich_event`` validates an event, normalises its time,
remembers the latest state per instance and decides whether the graph must
change.  ``get_all`` (vitrage-graph's start and every ``snapshots_interval``)
reads the faults still active from the controller (``[guest_ha]
controller_url``, ``GET /v1/active-faults``): the controller's event store is
the durable record of every fault and recovery, so a restarted vitrage-graph
gets its alarms back even if its own graph snapshot is gone or older than the
last events.  Vertices that the controller no longer lists are deleted (an
unreachable controller fails ``get_all`` and deletes nothing).
"""

import json
import urllib.request
from datetime import datetime

from oslo_config import cfg
from oslo_log import log
from vitrage.common.constants import DatasourceAction
from vitrage.common.constants import DatasourceProperties as DSProps
from vitrage.common.constants import EventProperties as EventProps
from vitrage.datasources.alarm_driver_base import AlarmDriverBase

from guest_ha.vitrage_datasource import (
    ALARM_NAME,
    DATASOURCE,
    DETAIL_INSTANCE,
    EVENT_TYPES,
    FAULT_EVENT,
    TIME_FORMAT,
)

LOG = log.getLogger(__name__)

#: Where the driver keeps the time the alarm was first raised.
UPDATE_TIME = "update_time"


def normalise_time(value):
    """Vitrage's event time format, from what a sender might have used
    (trailing ``Z``, no microseconds, ``+00:00``); ``None`` if unparsable."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1]
    if text.endswith("+00:00"):
        text = text[: -len("+00:00")]
    for fmt in (TIME_FORMAT, "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text, fmt).strftime(TIME_FORMAT)
        except ValueError:
            continue
    return None


class GuestHaDriver(AlarmDriverBase):
    def _vitrage_type(self):
        return DATASOURCE

    def _alarm_key(self, alarm):
        return (ALARM_NAME, alarm[EventProps.DETAILS][DETAIL_INSTANCE])

    def _is_valid(self, alarm):
        if not isinstance(alarm, dict) or alarm.get(EventProps.TYPE) not in EVENT_TYPES:
            return False
        details = alarm.get(EventProps.DETAILS)
        return (
            isinstance(details, dict)
            and bool(details.get(DETAIL_INSTANCE))
            and EventProps.TIME in alarm
        )

    def _is_erroneous(self, alarm):
        return bool(alarm) and alarm.get(EventProps.TYPE) == FAULT_EVENT

    def _status_changed(self, new_alarm, old_alarm):
        return self._is_erroneous(new_alarm) != self._is_erroneous(old_alarm)

    def get_all(self, datasource_action):
        """The controller's active faults, as alarms (none without
        ``controller_url``).  Raises if the controller cannot be read."""
        url = cfg.CONF[DATASOURCE].controller_url
        if not url:
            return self.make_pickleable([], DATASOURCE, datasource_action)
        request = urllib.request.Request(url.rstrip("/") + "/v1/active-faults")
        with urllib.request.urlopen(request, timeout=cfg.CONF[DATASOURCE].controller_timeout) as r:
            listed = json.loads(r.read(4 * 1024 * 1024 + 1)[: 4 * 1024 * 1024])
        events = []
        for event in listed if isinstance(listed, list) else []:
            if not self._is_valid(event) or not self._is_erroneous(event):
                LOG.warning("guest_ha: ignoring active fault %s from the controller", event)
                continue
            time = normalise_time(event.get(EventProps.TIME))
            if time is None:
                continue
            event[EventProps.TIME] = time
            event[DSProps.EVENT_TYPE] = event[EventProps.TYPE]
            event[UPDATE_TIME] = time
            self.cache[self._alarm_key(event)] = event, time
            events.append(event)
        LOG.info("guest_ha: %d active faults from the controller", len(events))
        return self.make_pickleable(events, DATASOURCE, datasource_action)

    def get_changes(self, datasource_action):
        return self.make_pickleable([], DATASOURCE, datasource_action)

    def enrich_event(self, event, event_type):
        """Return the event ready for the transformer, or ``None`` to drop it.

        - a fault raises the alarm, or refreshes it (new kind/reason) while it
          is active; ``update_time`` stays the time it was first raised;
        - a recovery clears an active alarm.  A recovery for an instance this
          process has not seen (vitrage-graph restarted since the fault) is
          passed on too: deleting an absent alarm is harmless;
        - a recovery for an alarm already cleared is dropped.
        """
        if not self._is_valid(event):
            LOG.warning("guest_ha: dropping invalid event %s", event)
            return None
        time = normalise_time(event.get(EventProps.TIME))
        if time is None:
            LOG.warning("guest_ha: dropping event with a bad time %s", event)
            return None
        event[EventProps.TIME] = time
        event[DSProps.EVENT_TYPE] = event[EventProps.TYPE]
        old = self._old_alarm(event)
        if old is not None and self._is_erroneous(old) and self._is_erroneous(event):
            event[UPDATE_TIME] = old.get(UPDATE_TIME, time)
        else:
            event[UPDATE_TIME] = time
        if not self._is_erroneous(event) and old is not None and not self._is_erroneous(old):
            self.cache[self._alarm_key(event)] = event, time
            return None
        self.cache[self._alarm_key(event)] = event, time
        LOG.info(
            "guest_ha: %s for instance %s",
            event[EventProps.TYPE],
            event[EventProps.DETAILS][DETAIL_INSTANCE],
        )
        return self.make_pickleable([event], DATASOURCE, DatasourceAction.UPDATE)[0]

    @staticmethod
    def get_event_types():
        return list(EVENT_TYPES)

    @staticmethod
    def should_delete_outdated_entities():
        return bool(cfg.CONF[DATASOURCE].controller_url)
