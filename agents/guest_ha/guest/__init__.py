"""Guest side of guest-ha: the guest daemon (``guest-ha-guestd``) and the app health API.

Everything under this package uses the Python standard library only (pyserial is
imported lazily for the legacy serial transport) and runs on Python 3.8+, so an
image can carry it as a single zipapp (see ``scripts/build_guestd_pyz.py``).
"""

DEFAULT_CONFIG_PATH = "/etc/guest-ha/guestd.conf"
DEFAULT_PORT = "/dev/virtio-ports/org.opnfv.ha.0"
DEFAULT_CHECKS_DIR = "/etc/guest-ha/checks.d"
DEFAULT_APP_SOCKET = "/run/guest-ha/app.sock"
