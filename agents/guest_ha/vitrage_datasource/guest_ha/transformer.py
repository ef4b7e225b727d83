"""Transformer of the ``guest_ha`` datasource: one alarm vertex per instance,
``on`` the ``nova.instance`` vertex whose id is the event's ``instance_id``.

If Vitrage does not know the instance yet (its nova datasource has not taken
a snapshot since the server was created), the edge goes to a placeholder
vertex with the same key, which the nova datasource fills in later.
"""

from oslo_log import log
from vitrage.common.constants import DatasourceProperties as DSProps
from vitrage.common.constants import EdgeLabel, EntityCategory
from vitrage.common.constants import EventProperties as EventProps
from vitrage.common.constants import VertexProperties as VProps
from vitrage.datasources import transformer_base as tbase
from vitrage.datasources.alarm_transformer_base import AlarmTransformerBase
from vitrage.datasources.nova.instance import NOVA_INSTANCE_DATASOURCE
from vitrage.graph import utils as graph_utils
from vitrage.utils.datetime import change_time_str_format

from guest_ha.vitrage_datasource import (
    ALARM_NAME,
    DATASOURCE,
    DETAIL_INSTANCE,
    RECOVERED_EVENT,
    TIME_FORMAT,
)
from guest_ha.vitrage_datasource.guest_ha.driver import UPDATE_TIME

LOG = log.getLogger(__name__)

DEFAULT_SEVERITY = "critical"


class GuestHaTransformer(AlarmTransformerBase):
    def _create_snapshot_entity_vertex(self, entity_event):
        # get_all's active faults (from the controller) have the events' shape.
        return self._create_update_entity_vertex(entity_event)

    def _create_snapshot_neighbors(self, entity_event):
        return self._create_update_neighbors(entity_event)

    def _create_update_entity_vertex(self, entity_event):
        details = dict(entity_event.get(EventProps.DETAILS) or {})
        details.setdefault("severity", DEFAULT_SEVERITY)
        metadata = dict(details)
        metadata[VProps.NAME] = ALARM_NAME
        metadata["event_type"] = entity_event[EventProps.TYPE]
        metadata[EventProps.TIME] = entity_event[EventProps.TIME]
        update_time = change_time_str_format(
            entity_event.get(UPDATE_TIME, entity_event[EventProps.TIME]),
            TIME_FORMAT,
            tbase.TIMESTAMP_FORMAT,
        )
        return graph_utils.create_vertex(
            self._create_entity_key(entity_event),
            vitrage_category=EntityCategory.ALARM,
            vitrage_type=DATASOURCE,
            vitrage_sample_timestamp=entity_event[DSProps.SAMPLE_DATE],
            entity_state=self._get_alarm_state(entity_event),
            update_timestamp=update_time,
            metadata=metadata,
        )

    def _create_update_neighbors(self, entity_event):
        return [
            self._create_neighbor(
                entity_event,
                entity_event[EventProps.DETAILS][DETAIL_INSTANCE],
                NOVA_INSTANCE_DATASOURCE,
                EdgeLabel.ON,
                neighbor_category=EntityCategory.RESOURCE,
            )
        ]

    def _create_entity_key(self, entity_event):
        return tbase.build_key(
            (
                EntityCategory.ALARM,
                DATASOURCE,
                ALARM_NAME,
                entity_event[EventProps.DETAILS][DETAIL_INSTANCE],
            )
        )

    def _ok_status(self, entity_event):
        return bool(entity_event) and entity_event.get(EventProps.TYPE) == RECOVERED_EVENT

    def get_vitrage_type(self):
        return DATASOURCE
