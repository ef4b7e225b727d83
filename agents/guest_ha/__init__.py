"""guest-ha: host-to-guest heartbeating and server group messaging over virtio-serial."""

__version__ = "0.1.0"
