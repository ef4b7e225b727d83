"""Test support shipped with guest-ha (used by the project's own test suite).

- ``guest_ha.testing.openstack``: real Keystone and nova-api on loopback,
  installed into cached venvs and started per test session.
"""
