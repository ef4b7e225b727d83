#!/usr/bin/env bash
# A light local heartbeat demo, in seconds and without Ansible or QEMU: the real
# compute engine, simulated VMs and a real guest daemon. The main job, the
# all-in-one demo with real guests, is scripts/aio.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m guest_ha_dev.sim.demo "$@"
