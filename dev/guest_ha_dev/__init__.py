"""Dev-only code of guest-ha: never installed, never imported by the product.

- ``testing``: real RabbitMQ and OpenStack services, controller fixtures and
  the other pieces the test suite starts;
- ``sim``: the VM simulator (QEMU's socket role), process harness and test
  domains, and the light local demo;
- ``aio``: the all-in-one demo driver behind ``scripts/aio.sh``.

``scripts/bootstrap.sh`` puts ``dev/`` on the project venv's path (a ``.pth``
file), so the tests, benchmarks and demos import ``guest_ha_dev`` while the
wheel built from ``agents/`` holds the product alone.
"""
