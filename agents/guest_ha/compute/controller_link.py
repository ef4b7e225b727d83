"""Everything the compute agent exchanges with the controllers over oslo.messaging:
fault forwarding (spool + batches), the server-group relay, the per-host RPC
server for deliveries, and periodic status."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Dict, List, Optional

from .config import ComputeConfig
from .forwarder import ForwardingSink
from .sg_relay import ComputeEndpoint, ServerGroupRelay
from .spool import Spool

LOG = logging.getLogger("guest_ha.compute.link")


class ControllerLink:
    def __init__(self, config: ComputeConfig) -> None:
        from ..messaging import options as messaging_options
        from ..messaging.rpc import ControllerClient, get_transport

        link = config.controller
        files = (
            [link.messaging_config]
            if link.messaging_config and os.path.exists(link.messaging_config)
            else []
        )
        conf = messaging_options.configure(link.transport_url, config_files=files)
        self.host = link.host or conf.guest_ha.host or socket.gethostname()
        self.transport = get_transport()
        self.client = ControllerClient(self.transport, self.host)
        self.engine: Any = None
        self.sink = ForwardingSink(
            Spool(link.spool_dir), self._send_batch, self.host, status=self._status
        )
        self.relay = ServerGroupRelay(ControllerClient(self.transport, self.host), self.host)
        self._server: Any = None
        self._stopping = False

    def _send_batch(self, events: List[Dict[str, Any]]) -> Dict[str, Any]:
        ack = self.client.call("report_events", events=events)
        if not isinstance(ack, dict):
            raise RuntimeError(f"controller answered {ack!r}")
        return ack

    def _status(self, depth: int) -> None:
        vms = len(self.engine.vms) if self.engine is not None else 0
        self.client.call("compute_status", timeout=5, host=self.host, spool_depth=depth, vms=vms)

    def attach(self, engine: Any) -> None:
        """Connect the engine: relay its server-group PDUs, serve deliveries to it."""
        self.engine = engine
        engine.sg_relay = self.relay
        # serve_compute() blocks while the broker is down: never hold up the agent.
        threading.Thread(target=self._serve, name="compute-rpc", daemon=True).start()

    def _serve(self) -> None:
        from ..messaging.rpc import serve_compute

        try:
            server = serve_compute(self.transport, [ComputeEndpoint(self.engine)], self.host)
        except Exception:
            LOG.exception("cannot serve the per-host topic for %s", self.host)
            return
        if self._stopping:
            server.stop()
            return
        self._server = server
        LOG.info("serving deliveries for host %s", self.host)

    def close(self) -> None:
        self._stopping = True
        self.relay.close()
        if self._server is not None:
            from ..messaging.rpc import stop_server

            stop_server(self._server)

    def snapshot(self) -> Optional[Dict[str, Any]]:
        return {
            "host": self.host,
            "spool_depth": self.sink.spool.depth,
            "forwarded": self.sink.sent,
            "sg_relayed": self.relay.relayed,
            "sg_dropped": self.relay.dropped,
        }
