#!/usr/bin/env bash
# Ansible quality gates:
#   1. ansible-lint, production profile, on roles/ and playbooks/ (config: .ansible-lint);
#   2. ansible-test sanity on the collection guest_ha.guest_ha as
#      scripts/build_collection.py generates it (ansible-test only works on collections).
# Usage: scripts/ansible_quality.sh [lint|sanity]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/.venv/bin:$PATH"
WORK=$(mktemp -d /tmp/gha-quality-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export ANSIBLE_HOME="${ANSIBLE_HOME:-$WORK/ansible-home}"
what=${1:-all}

if [[ $what == all || $what == lint ]]; then
    echo "== ansible-lint (production profile)"
    ansible-lint --offline --profile production roles playbooks
fi

if [[ $what == all || $what == sanity ]]; then
    echo "== ansible-test sanity (the built collection guest_ha.guest_ha)"
    # The collection tree exactly as scripts/build_collection.py generates it for
    # the tarball: module, module_utils, roles and playbooks, no rewriting.
    coll=$(python scripts/build_collection.py --tree-only --out "$WORK")
    git -C "$coll" init -q && git -C "$coll" add -A

    # ansible-test builds a venv per sanity test and bootstraps pip in it with a
    # script from ci-files.testing.ansible.com, which this network cannot reach.
    # Its documented workaround is to put that script in its cache; ours
    # bootstraps pip with the standard library's ensurepip instead (offline),
    # then pip installs the pinned versions from the configured package index.
    pip_version=$(python - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version="3.11"))["pip"])
PY
)
    shim="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
    if [[ ! -f $shim ]] || grep -q "guest-ha scripts/ansible_quality.sh" "$shim"; then
        mkdir -p "$(dirname "$shim")"
        cat >"$shim" <<'PY'
# guest-ha scripts/ansible_quality.sh: stands in for ansible-test's get-pip bootstrap
# script (unreachable here). Bootstraps pip with ensurepip, then installs the
# requested pinned packages with it.
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=False)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
# ansible-test runs this with a reduced environment (no PIP_CERT): use the
# system CA bundle, which also holds the CA of a TLS-intercepting proxy.
for bundle in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
    if os.path.exists(bundle):
        args = ["--cert", bundle] + args
        break
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PY
    fi
    # Every sanity test of this ansible-core (validate-modules, pylint, pep8,
    # compile, import, ansible-doc, yamllint, ...). Tests needing a tool that is
    # not installed here (shellcheck, pslint) have nothing to check in this tree.
    tests=(--skip-test shellcheck --skip-test pslint)
    (cd "$coll" && ansible-test sanity --local --python 3.11 --color no "${tests[@]}" 2>&1 |
        grep -v -e "^WARNING: Location .* is ignored" -e "^Requirement already satisfied")
fi
echo "== ansible quality gates passed"
