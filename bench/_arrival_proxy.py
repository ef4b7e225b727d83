"""A TCP relay in front of an HTTP service that notes when requests arrive.

The fault pipeline benchmark measures "compute event to reporter endpoint
received". For an HTTP reporter the endpoint is the OpenStack API; this relay
sits between the controller and that API (the reporter's ``endpoint_override``
points at it), forwards every byte both ways unchanged, and records the wall
clock time at which each request line matching ``pattern`` arrives.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import List, Tuple
from urllib.parse import urlsplit


class ArrivalProxy:
    def __init__(self, upstream_url: str, pattern: bytes) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.path = parts.path.rstrip("/")
        self.pattern = re.compile(pattern)
        self.arrivals: List[Tuple[float, str]] = []  # (wall time, first group)
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}{self.path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if requests:
                    now = time.time()
                    window = tail + data
                    for m in self.pattern.finditer(window):
                        if m.end() > len(tail):  # not already seen in the previous chunk
                            with self._lock:
                                self.arrivals.append((now, m.group(1).decode()))
                    tail = window[-256:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
