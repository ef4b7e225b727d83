"""A VM simulator that plays QEMU's part for tests, benchmarks and the local demo.

Per VM it serves the host side of the channel as a UNIX socket (as QEMU does
with a ``mode='bind'`` channel) and connects the other end either to an
in-process simulated guest (for scale) or to a pseudo-terminal that a real
guest daemon process opens as its port.
"""

from .vmsim import SimVmInfo, VmSimulator

__all__ = ["SimVmInfo", "VmSimulator"]
