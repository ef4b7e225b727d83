"""Where heartbeat events go. The controller RPC sink arrives with the controller."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol

LOG = logging.getLogger("guest_ha.compute.events")


@dataclass(frozen=True)
class VmEvent:
    """A heartbeat event about one VM, stamped with the VM's identity from its channel."""

    kind: str
    instance_uuid: str
    domain: str
    monotonic: float
    wall_time: float
    fault: bool
    detail: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "instance_uuid": self.instance_uuid,
            "domain": self.domain,
            "fault": self.fault,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.wall_time))
            + f".{int(self.wall_time * 1e6) % 1000000:06d}Z",
            "monotonic": self.monotonic,
            "detail": self.detail,
        }


class EventSink(Protocol):
    def emit(self, event: VmEvent) -> None: ...

    def close(self) -> None: ...


class LogSink:
    """Writes each event as one log line carrying the instance UUID."""

    def emit(self, event: VmEvent) -> None:
        level = logging.WARNING if event.fault else logging.INFO
        detail = " ".join(f"{k}={v}" for k, v in event.detail.items() if v is not None)
        LOG.log(
            level, "[instance %s] %s %s %s", event.instance_uuid, event.domain, event.kind, detail
        )

    def close(self) -> None:
        pass


class JsonLinesSink:
    """Appends each event as one JSON line, flushed at once (tests, external tools)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def emit(self, event: VmEvent) -> None:
        line = json.dumps(event.to_dict(), separators=(",", ":"), default=str) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)


class MultiSink:
    def __init__(self, sinks: List[EventSink]) -> None:
        self.sinks = sinks

    def emit(self, event: VmEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # one broken sink must not stop the others
                LOG.exception("event sink %s failed", type(sink).__name__)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def build_sink(log: bool, jsonl: Optional[str]) -> MultiSink:
    sinks: List[EventSink] = []
    if log:
        sinks.append(LogSink())
    if jsonl:
        sinks.append(JsonLinesSink(jsonl))
    return MultiSink(sinks)
