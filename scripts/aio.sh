#!/usr/bin/env bash
# The main job: the all-in-one demo. On a fresh Debian 12 machine, as root:
#   scripts/aio.sh               deploy (playbooks/aio.yml) and run the live demo
#   scripts/aio.sh --teardown    remove everything it made (playbooks/aio_teardown.yml)
# Options: --root DIR (install under DIR), -e VAR=VALUE (Ansible extra vars),
# --skip-deploy; see `scripts/aio.sh --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m guest_ha_dev.aio.demo "$@"
