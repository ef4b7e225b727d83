"""Test support shipped with guest-ha (used by the project's own test suite).

- ``guest_ha_dev.testing.openstack``: real Keystone and nova-api on loopback,
  installed into cached venvs and started per test session.
"""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
