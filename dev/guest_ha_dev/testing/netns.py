"""Network namespaces as separate "hosts" on this machine (root only).

``NetNamespace(index)`` creates ``gha<pid>-<index>`` with a veth pair: the root
side ``10.<a>.<index>.1/24``, the namespace side ``.2/24``, loopback up, and a
default route through the root side.  Services in the root namespace listen on
``host_address``; processes started with ``ip netns exec NAME`` reach them
there.  Only addresses the test made are used.  ``delete()`` removes both.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, List


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


class NetNamespace:
    def __init__(self, index: int) -> None:
        tag = f"{os.getpid() % 10000}{index}"
        self.name = f"gha{os.getpid()}-{index}"
        self.host_if, self.ns_if = f"gh{tag}a", f"gh{tag}b"
        net = f"10.{150 + os.getpid() % 50}.{index}"
        self.host_address, self.address = f"{net}.1", f"{net}.2"
        self._made: List[str] = []

    def create(self) -> "NetNamespace":
        _ip("netns", "add", self.name)
        self._made.append("netns")
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._made.append("veth")
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        for args in (
            ("addr", "add", f"{self.address}/24", "dev", self.ns_if),
            ("link", "set", self.ns_if, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", self.name, *args)
        return self

    def delete(self) -> None:
        if "veth" in self._made:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        if "netns" in self._made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        self._made.clear()

    def __enter__(self) -> "NetNamespace":
        try:
            return self.create()
        except BaseException:
            self.delete()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.delete()
