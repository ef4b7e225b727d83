"""Helpers shared by the benchmarks: import path, percentiles, progress, machine info."""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
from typing import Any, Dict, List, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The product (agents/) and the dev-only tree (dev/: simulator, test cloud),
# also when a benchmark runs from a Python without the project's venv.
sys.path[:0] = [os.path.join(REPO, "agents"), os.path.join(REPO, "dev")]

from guest_ha_dev.sim.harness import process_cpu_seconds  # noqa: E402


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM (a timeout, Ctrl-C from a parent) unwinds the benchmark's "with"
    # blocks, so the RabbitMQ node, controller and agents it started are
    # stopped instead of left running.
    raise SystemExit(f"benchmark stopped by signal {signum}")


signal.signal(signal.SIGTERM, _stop_on_sigterm)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation), as latency reports usually use."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine() -> Dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def emit(result: Dict[str, Any]) -> None:
    """The benchmark's result: one JSON object on the last line of stdout."""
    print(json.dumps(result, sort_keys=True), flush=True)


def round_ms(values: List[float]) -> List[float]:
    return [round(v, 2) for v in values]


class CpuMeter:
    """CPU use of named processes over an interval, in percent of one core."""

    def __init__(self, pids: Dict[str, int]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self._start: Dict[str, float] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> Dict[str, float]:
        elapsed = max(1e-6, time.monotonic() - self._t0)
        out = {
            name: round(100 * (process_cpu_seconds(pid) - self._start[name]) / elapsed, 1)
            for name, pid in self.pids.items()
        }
        out["total"] = round(sum(out.values()), 1)
        return out
