"""Publish notifications exactly as Nova does, for tests (Nova itself cannot
boot servers here; its versioned notification format is reproduced field by
field from Nova's payload classes)."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any, Dict, List

import oslo_messaging

from guest_ha.messaging.rpc import get_notification_transport


class NovaPublisher:
    """Publishes as Nova does: exchange ``nova`` (Nova's control_exchange),
    topic ``versioned_notifications``, driver ``messagingv2``."""

    def __init__(self, url: str) -> None:
        from guest_ha.messaging.options import configure

        conf = configure()
        # The exchange is fixed when a transport is created; Nova's is "nova".
        conf.set_override("control_exchange", "nova")
        try:
            self.transport = get_notification_transport(url)
        finally:
            conf.clear_override("control_exchange")

    def publish(self, host: str, event_type: str, payload: Dict[str, Any]) -> None:
        notifier = oslo_messaging.Notifier(
            self.transport,
            publisher_id=f"nova-compute:{host}",
            driver="messagingv2",
            topics=["versioned_notifications"],
        )
        notifier.info({}, event_type, payload)

    def close(self) -> None:
        self.transport.cleanup()


def instance_action_payload(uuid: str, name: str, host: str, **changes: Any) -> Dict[str, Any]:
    """Nova's ``InstanceActionPayload`` (version 1.8) as it is on the wire."""
    data = {
        "uuid": uuid,
        "user_id": "fake",
        "tenant_id": "fake",
        "reservation_id": "r-" + uuid[:8],
        "display_name": name,
        "display_description": None,
        "host_name": name,
        "host": host,
        "node": host,
        "os_type": None,
        "architecture": None,
        "availability_zone": "nova",
        "flavor": {
            "nova_object.name": "FlavorPayload",
            "nova_object.namespace": "nova",
            "nova_object.version": "1.4",
            "nova_object.data": {"name": "sg.small", "vcpus": 1, "memory_mb": 512},
        },
        "image_uuid": "",
        "key_name": None,
        "kernel_id": "",
        "ramdisk_id": "",
        "created_at": "2026-01-01T10:00:00Z",
        "launched_at": "2026-01-01T10:00:05Z",
        "terminated_at": None,
        "deleted_at": None,
        "updated_at": "2026-01-01T10:05:00Z",
        "state": "active",
        "power_state": "running",
        "task_state": None,
        "progress": 0,
        "ip_addresses": [],
        "block_devices": [],
        "metadata": {},
        "locked": False,
        "auto_disk_config": "MANUAL",
        "request_id": "req-" + str(uuidlib.uuid4()),
        "action_initiator_user": "admin",
        "action_initiator_project": "admin",
        "locked_reason": None,
        "shares": [],
        "fault": None,
    }
    data.update(changes)
    return {
        "nova_object.name": "InstanceActionPayload",
        "nova_object.namespace": "nova",
        "nova_object.version": "1.8",
        "nova_object.data": data,
    }


def server_group_payload(group: str, name: str, members: List[str]) -> Dict[str, Any]:
    """Nova's ``ServerGroupPayload`` (version 1.1)."""
    return {
        "nova_object.name": "ServerGroupPayload",
        "nova_object.namespace": "nova",
        "nova_object.version": "1.1",
        "nova_object.data": {
            "uuid": group,
            "name": name,
            "policy": "anti-affinity",
            "policies": ["anti-affinity"],
            "rules": {},
            "members": members,
            "hosts": None,
            "project_id": "fake",
            "user_id": "fake",
        },
    }
