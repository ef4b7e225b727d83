"""Prometheus metrics of the compute agent: text exposition over a stdlib HTTP server.

The server thread never touches engine state: it asks the engine's loop for a
snapshot (``engine.post``) and waits for it, so a scrape costs the heartbeat
loop one pass over the VMs and can never race it.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

LOG = logging.getLogger("guest_ha.compute.metrics")

_COUNTERS = (
    # (metric, per-VM channel counter, help)
    ("guest_ha_compute_bad_frames_total", "bad_frames", "Frames rejected by the protocol core."),
    ("guest_ha_compute_rate_limited_total", "rate_limited", "PDUs dropped by a rate limit."),
    ("guest_ha_compute_nacks_suppressed_total", "nacks_suppressed", "Nacks over the limit."),
    ("guest_ha_compute_events_suppressed_total", "events_suppressed", "Events over the limit."),
    ("guest_ha_compute_read_pauses_total", "read_pauses", "Times a guest's read budget ran out."),
    ("guest_ha_compute_output_dropped_total", "output_dropped", "PDUs dropped: output full."),
    ("guest_ha_compute_misbehaving_episodes_total", "misbehaving_episodes", "Misbehaving events."),
)


def parse_listen(listen: str) -> Tuple[str, int]:
    """``host:port`` (``:port`` or a bare port means loopback) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "", listen
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"metrics_listen: {listen!r} is not host:port") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"metrics_listen: port {number} out of range")
    return host, number


def collect(engine: Any, spool_depth: Optional[Callable[[], Optional[int]]] = None) -> str:
    """The exposition text (run it in the engine's loop thread)."""
    now = engine.clock()
    states: Dict[str, int] = {}
    health: Dict[str, int] = {}
    totals: Dict[str, int] = {}
    nacks: Dict[str, int] = {}
    challenges = responses = missed = connects = failures = throttled = 0
    throttled_vms: List[str] = []
    for vm in engine.vms.values():
        hb = vm.channel.heartbeat_view
        states[hb.state] = states.get(hb.state, 0) + 1
        health[hb.health] = health.get(hb.health, 0) + 1
        challenges += hb.challenges_sent
        responses += hb.responses_ok
        missed += hb.missed_total
        connects += vm.connects
        failures += vm.connect_failures
        for key, value in vm.channel.counters.items():
            totals[key] = totals.get(key, 0) + value
        for code, value in vm.channel.nacks_by_code.items():
            nacks[code] = nacks.get(code, 0) + value
        if vm.channel.is_misbehaving(now):
            throttled += 1
            throttled_vms.append(vm.spec.uuid)
    out: List[str] = []

    def metric(name: str, kind: str, help_text: str, samples: List[Tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    metric(
        "guest_ha_compute_vms",
        "gauge",
        "VMs by heartbeat state.",
        [(f'{{state="{s}"}}', n) for s, n in sorted(states.items())],
    )
    metric(
        "guest_ha_compute_vms_health",
        "gauge",
        "VMs by health (a fault kind, or healthy).",
        [(f'{{health="{h}"}}', n) for h, n in sorted(health.items())],
    )
    metric(
        "guest_ha_compute_challenges_sent_total", "counter", "Challenges sent.", [("", challenges)]
    )
    metric("guest_ha_compute_responses_ok_total", "counter", "Correct answers.", [("", responses)])
    metric("guest_ha_compute_misses_total", "counter", "Challenges unanswered.", [("", missed)])
    metric(
        "guest_ha_compute_nacks_sent_total",
        "counter",
        "Nacks sent to guests, by code.",
        [(f'{{code="{_label(c)}"}}', n) for c, n in sorted(nacks.items())],
    )
    for name, key, help_text in _COUNTERS:
        metric(name, "counter", help_text, [("", totals.get(key, 0))])
    metric(
        "guest_ha_compute_throttled_guests",
        "gauge",
        "Guests that hit a limit within the last misbehaving_quiet_s.",
        [("", throttled)],
    )
    metric(
        "guest_ha_compute_guest_throttled",
        "gauge",
        "1 for each guest currently throttled.",
        [(f'{{instance_uuid="{_label(u)}"}}', 1) for u in sorted(throttled_vms)],
    )
    metric("guest_ha_compute_connects_total", "counter", "Channel connects.", [("", connects)])
    metric(
        "guest_ha_compute_reconnects_total",
        "counter",
        "Channel connects after the first one of each VM.",
        [("", max(0, connects - len(engine.vms)))],
    )
    metric(
        "guest_ha_compute_connect_failures_total",
        "counter",
        "Failed connect attempts.",
        [("", failures)],
    )
    depth = spool_depth() if spool_depth is not None else None
    if depth is not None:
        metric(
            "guest_ha_compute_spool_depth", "gauge", "Events not yet acknowledged.", [("", depth)]
        )
    return "\n".join(out) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """Serves ``/metrics`` on ``listen`` (loopback unless an address is given)."""

    def __init__(
        self,
        engine: Any,
        listen: str,
        spool_depth: Optional[Callable[[], Optional[int]]] = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.spool_depth = spool_depth
        self.timeout_s = timeout_s
        host, port = parse_listen(listen)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                text = server.scrape()
                if text is None:
                    self.send_error(503, "engine busy")
                    return
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> "MetricsServer":
        self._thread.start()
        LOG.info("metrics on http://%s:%d/metrics", self.address[0], self.address[1])
        return self

    def scrape(self) -> Optional[str]:
        done = threading.Event()
        result: List[str] = []

        def run() -> None:
            try:
                result.append(collect(self.engine, self.spool_depth))
            finally:
                done.set()

        self.engine.post(run)
        if not done.wait(self.timeout_s):
            return None
        return result[0] if result else None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
