#!/usr/bin/env bash
# The main job. Until the all-in-one deployment lands, this is the local
# heartbeat demo: the real compute engine, simulated VMs and a real guest daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m guest_ha_dev.sim.demo "$@"
