"""Seed Nova's databases with Nova's own objects (runs inside the nova venv).

A lone nova-api cannot boot a server: that needs placement, the conductor,
the scheduler, glance, neutron and a compute service.  Tests still want real
servers to look at through the real API, so this script writes them the way
nova-compute and nova-conductor would: through ``nova.objects``
(Flavor, Service + ComputeNode + HostMapping, Instance + InstanceMapping,
InstanceGroup with members).  Nothing is written as raw SQL.

Usage (what ``guest_ha_dev.testing.openstack`` runs)::

    <nova-venv>/bin/python nova_seed.py --config-file nova.conf < ops.json

stdin holds a JSON list of operations; the last line of stdout is a JSON list
with one result per operation.  Operations:

- ``{"op": "cells", "cell0", "cell1", "transport_url"}``: map cell0 and create
  cell1 with nova-manage's own code (``CellV2Commands``), in this process
- ``{"op": "flavor", "name", "flavorid", "vcpus", "memory_mb", "root_gb",
  "extra_specs"}``
- ``{"op": "service", "host"}``: only the nova-compute Service row (idempotent)
- ``{"op": "host", "host"}``: nova-compute Service, ComputeNode and
  HostMapping into cell1 (idempotent)
- ``{"op": "server_group", "name", "policy", "uuid", "project_id",
  "user_id"}``
- ``{"op": "server", "uuid", "name", "flavor", "host", "server_group",
  "vm_state", "project_id", "user_id", "metadata"}``

Standard library and nova only: this file has no guest_ha imports.
"""

import json
import sys
import uuid as uuidlib

from nova import config, context, exception, objects
from nova.compute import power_state, vm_states
from nova.network import model as network_model
from oslo_utils import timeutils

POWER_STATES = {
    vm_states.ACTIVE: power_state.RUNNING,
    vm_states.PAUSED: power_state.PAUSED,
    vm_states.SUSPENDED: power_state.SUSPENDED,
    vm_states.STOPPED: power_state.SHUTDOWN,
    vm_states.SHELVED: power_state.SHUTDOWN,
    vm_states.SHELVED_OFFLOADED: power_state.SHUTDOWN,
    vm_states.ERROR: power_state.NOSTATE,
}


def _cell1(ctxt):
    for cell in objects.CellMappingList.get_all(ctxt):
        if cell.name == "cell1":
            return cell
    raise RuntimeError("no cell named cell1 in the API database")


def _flavor(ctxt, ref):
    try:
        return objects.Flavor.get_by_name(ctxt, ref)
    except Exception:
        return objects.Flavor.get_by_flavor_id(ctxt, ref)


def _group(ctxt, ref):
    try:
        return objects.InstanceGroup.get_by_uuid(ctxt, ref)
    except Exception:
        return objects.InstanceGroup.get_by_name(ctxt, ref)


def op_cells(ctxt, op):
    from nova.cmd import manage

    commands = manage.CellV2Commands()
    commands.map_cell0(database_connection=op["cell0"])
    rc = commands.create_cell(
        name="cell1", database_connection=op["cell1"], transport_url=op["transport_url"]
    )
    if rc not in (0, None):
        raise RuntimeError(f"nova-manage cell_v2 create_cell returned {rc}")
    return {"cell1": _cell1(ctxt).uuid}


def op_flavor(ctxt, op):
    flavor = objects.Flavor(
        context=ctxt,
        name=op["name"],
        flavorid=op.get("flavorid") or str(uuidlib.uuid4()),
        vcpus=op.get("vcpus", 1),
        memory_mb=op.get("memory_mb", 512),
        root_gb=op.get("root_gb", 1),
        ephemeral_gb=0,
        swap=0,
        rxtx_factor=1.0,
        vcpu_weight=0,
        disabled=False,
        is_public=True,
        extra_specs=dict(op.get("extra_specs") or {}),
    )
    flavor.create()
    return {
        "id": flavor.id,
        "flavorid": flavor.flavorid,
        "name": flavor.name,
        "extra_specs": dict(flavor.extra_specs),
    }


def op_service(ctxt, op):
    """Only the nova-compute Service row of ``host`` in cell1 (idempotent).

    The booting cloud writes it before nova-compute's first start: a new
    nova-compute refuses to start on a hypervisor that already runs domains
    (``_sanity_check_new_host``), and the test machine's libvirtd is shared."""
    cell = _cell1(ctxt)
    with context.target_cell(ctxt, cell) as cctxt:
        service = objects.Service.get_by_host_and_binary(cctxt, op["host"], "nova-compute")
        if service is None:
            service = objects.Service(
                cctxt,
                host=op["host"],
                binary="nova-compute",
                topic="compute",
                report_count=0,
                disabled=False,
            )
            service.create()
        return {"service_id": service.id}


def op_host(ctxt, op):
    host = op["host"]
    cell = _cell1(ctxt)
    with context.target_cell(ctxt, cell) as cctxt:
        service = objects.Service.get_by_host_and_binary(cctxt, host, "nova-compute")
        if service is None:
            service = objects.Service(
                cctxt,
                host=host,
                binary="nova-compute",
                topic="compute",
                report_count=0,
                disabled=False,
            )
            service.create()
        try:
            nodes = objects.ComputeNodeList.get_all_by_host(cctxt, host)
        except exception.ComputeHostNotFound:
            nodes = []
        if nodes:
            node = nodes[0]
        else:
            node = objects.ComputeNode(
                cctxt,
                host=host,
                hypervisor_hostname=host,
                service_id=service.id,
                uuid=str(uuidlib.uuid4()),
                vcpus=16,
                memory_mb=32768,
                local_gb=500,
                vcpus_used=0,
                memory_mb_used=0,
                local_gb_used=0,
                free_ram_mb=32768,
                free_disk_gb=500,
                current_workload=0,
                running_vms=0,
                hypervisor_type="QEMU",
                hypervisor_version=7002000,
                cpu_info="{}",
                disk_available_least=500,
                host_ip="127.0.0.1",
                supported_hv_specs=[],
                pci_device_pools=objects.PciDevicePoolList(objects=[]),
                cpu_allocation_ratio=16.0,
                ram_allocation_ratio=1.5,
                disk_allocation_ratio=1.0,
                stats={},
                metrics="[]",
                numa_topology=None,
                mapped=1,
            )
            node.create()
    try:
        objects.HostMapping.get_by_host(ctxt, host)
    except exception.HostMappingNotFound:
        objects.HostMapping(ctxt, host=host, cell_mapping=cell).create()
    return {
        "host": host,
        "service_id": service.id,
        "service_uuid": service.uuid,
        "compute_node_id": node.id,
        "compute_node_uuid": node.uuid,
    }


def op_server_group(ctxt, op):
    group = objects.InstanceGroup(
        ctxt,
        uuid=op.get("uuid") or str(uuidlib.uuid4()),
        name=op["name"],
        project_id=op["project_id"],
        user_id=op["user_id"],
        policy=op.get("policy", "anti-affinity"),
        rules={},
        members=[],
    )
    group.create()
    return {
        "uuid": group.uuid,
        "name": group.name,
        "policy": group.policy,
        "project_id": group.project_id,
    }


def op_server(ctxt, op):
    host_info = op_host(ctxt, {"host": op["host"]})
    flavor = _flavor(ctxt, op["flavor"])
    vm_state = op.get("vm_state", vm_states.ACTIVE)
    cell = _cell1(ctxt)
    now = timeutils.utcnow()
    user_ctxt = context.RequestContext(
        user_id=op["user_id"], project_id=op["project_id"], is_admin=True
    )
    with context.target_cell(user_ctxt, cell) as cctxt:
        inst = objects.Instance(
            context=cctxt,
            uuid=op["uuid"],
            display_name=op["name"],
            hostname=op["name"].replace("_", "-").lower(),
            host=op["host"],
            node=op["host"],
            compute_id=host_info["compute_node_id"],
            launched_on=op["host"],
            project_id=op["project_id"],
            user_id=op["user_id"],
            vm_state=vm_state,
            power_state=POWER_STATES.get(vm_state, power_state.NOSTATE),
            task_state=None,
            instance_type_id=flavor.id,
            memory_mb=flavor.memory_mb,
            vcpus=flavor.vcpus,
            root_gb=flavor.root_gb,
            ephemeral_gb=flavor.ephemeral_gb,
            flavor=flavor,
            old_flavor=None,
            new_flavor=None,
            image_ref="",
            launched_at=now,
            availability_zone="nova",
            root_device_name="/dev/vda",
            reservation_id="r-" + op["uuid"][:8],
            locked=False,
            config_drive="",
            metadata=dict(op.get("metadata") or {}),
            system_metadata={},
            info_cache=objects.InstanceInfoCache(network_info=network_model.NetworkInfo()),
            security_groups=objects.SecurityGroupList(objects=[]),
        )
        inst.create()
    objects.InstanceMapping(
        ctxt,
        instance_uuid=inst.uuid,
        cell_mapping=cell,
        project_id=op["project_id"],
        user_id=op["user_id"],
        queued_for_delete=False,
    ).create()
    group_uuid = None
    if op.get("server_group"):
        group = _group(ctxt, op["server_group"])
        objects.InstanceGroup.add_members(ctxt, group.uuid, [inst.uuid])
        group_uuid = group.uuid
    return {
        "uuid": inst.uuid,
        "name": inst.display_name,
        "host": inst.host,
        "flavor": flavor.name,
        "vm_state": inst.vm_state,
        "server_group": group_uuid,
    }


OPS = {
    "cells": op_cells,
    "flavor": op_flavor,
    "host": op_host,
    "service": op_service,
    "server_group": op_server_group,
    "server": op_server,
}


def main():
    config.parse_args(sys.argv, default_config_files=[])
    objects.register_all()
    ctxt = context.get_admin_context()
    results = [OPS[op["op"]](ctxt, op) for op in json.load(sys.stdin)]
    sys.stdout.write("\n" + json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
