"""Runs the conformance vectors of tests/conformance/ against the Python core.

The vector format is described in tests/conformance/README.md. The C library
runs the same files through its own driver (agents/guest-c/tests/conformance.c);
both must pass every vector under every split of its input streams.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

from channel_support import take_output
from guest_ha.protocol.channel import GuestChannel, HostPdu
from guest_ha.protocol.envelope import HEARTBEAT, decode_envelope
from guest_ha.protocol.errors import FrameTooLarge, ProtocolError
from guest_ha.protocol.framing import FrameDecoder
from guest_ha.protocol.heartbeat import GuestHeartbeat
from guest_ha.protocol.messages import _printable, json_size_bytes, validate

VECTOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance")
SPLITS = (0, 1, 2, 3, 5, 7, 13, 64, 4095, 4097)
"""Chunk sizes every input stream is fed in (0: the whole stream in one chunk)."""
KINDS = ("framing", "validation", "guest")


def load(kind: str) -> List[Dict[str, Any]]:
    with open(os.path.join(VECTOR_DIR, kind + ".json"), encoding="utf-8") as fh:
        return json.load(fh)


def stream_bytes(parts: List[Any]) -> bytes:
    """A byte stream from its parts: text (UTF-8), {"hex": ...} or {"repeat": s, "count": n}."""
    out = bytearray()
    for part in parts:
        if isinstance(part, str):
            out += part.encode("utf-8")
        elif "hex" in part:
            out += bytes.fromhex(part["hex"])
        else:
            out += part["repeat"].encode("utf-8") * part["count"]
    return bytes(out)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    if size == 0 or not data:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def run_framing(vec: Dict[str, Any], split: int) -> Optional[str]:
    dec = FrameDecoder()
    got: List[Any] = []
    for chunk in chunks(stream_bytes(vec["stream"]), split):
        got += dec.feed(chunk)
    want = vec["expect"]
    if len(got) != len(want):
        return f"{len(got)} items, expected {len(want)}"
    for i, (item, exp) in enumerate(zip(got, want)):
        if "error" in exp:
            if not isinstance(item, FrameTooLarge):
                return f"item {i}: expected frame_too_large"
        elif item != stream_bytes(exp["frame"]):
            return f"item {i}: frame differs"
    return None


def decode_for_nack(frame: bytes, direction: str) -> Tuple[str, Any]:
    """("ok", message) or ("error", (code, app, orig_msg_type as a nack carries it))."""
    app = HEARTBEAT
    try:
        envelope = decode_envelope(frame)
        app = envelope.dest_addr
        return "ok", validate(envelope, direction)
    except ProtocolError as exc:
        return "error", (exc.code, app, _printable(exc.msg_type[:64]))


def run_validation(vec: Dict[str, Any], split: int) -> Optional[str]:
    kind, result = decode_for_nack(stream_bytes(vec["frame"]), vec["direction"])
    exp = vec["expect"]
    if "error" in exp:
        want = (exp["error"], exp["app"], exp["orig_msg_type"])
        return None if kind == "error" and result == want else f"got {kind} {result}"
    if kind != "ok":
        return f"rejected: {result}"
    if "ok_size" in exp:
        size = len(json_size_bytes(result["data"]))
        return None if size == exp["ok_size"] else f"data is {size} bytes"
    ok = exp["ok"]
    got = (result.app, result.msg_type, dict(result.fields))
    return None if got == (ok["app"], ok["msg_type"], ok["fields"]) else f"got {got}"


def pdu_matches(got: Dict[str, Any], exp: Dict[str, Any]) -> bool:
    """``got`` is {"app", "msg_type", "data"}; a nack expectation names only its code."""
    if got["app"] != exp["app"] or got["msg_type"] != exp["msg_type"]:
        return False
    fields = {k: v for k, v in got["data"].items() if k != "msg_type"}
    if "code" in exp:
        return fields.get("orig_msg_type") == exp["orig_msg_type"] and str(
            fields.get("log_msg", "")
        ).startswith(exp["code"] + ": ")
    return fields == exp["fields"]


def parse_output(data: bytes) -> List[Dict[str, Any]]:
    out = []
    for frame in FrameDecoder(1 << 20).feed(data):
        assert isinstance(frame, bytes)
        obj = json.loads(frame)
        assert obj["source_addr"] == obj["dest_addr"] and obj["version"] == 1
        out.append(
            {"app": obj["dest_addr"], "msg_type": obj["data"]["msg_type"], "data": obj["data"]}
        )
    return out


def run_guest(vec: Dict[str, Any], split: int) -> Optional[str]:
    cfg = vec["config"]
    hb = GuestHeartbeat(
        name=cfg["name"],
        interval_ms=cfg["interval_ms"],
        invocation_id=cfg["invocation_id"],
        corrective_action=cfg.get("corrective_action"),
    )
    ch = GuestChannel(hb, vec["steps"][0]["at"])
    for i, step in enumerate(vec["steps"]):
        now, do = step["at"], step["do"]
        if do == "start":
            hb.start(now)
            ch.tick(now)
        elif do == "tick":
            ch.tick(now)
        elif do == "receive":
            for chunk in chunks(stream_bytes(step["stream"]), split):
                ch.receive_data(chunk, now)
        elif do == "set_health":
            hb.set_health("healthy" if step["healthy"] else "unhealthy", step["reason"])
        elif do == "exit":
            ch.exit(now, step["reason"])
        elif do == "host_connected":
            ch.host_connected(now)
        elif do == "host_disconnected":
            ch.host_disconnected(now)
        else:
            return f"step {i}: unknown action {do}"
        sent = parse_output(take_output(ch))
        inbox = [
            {"app": m.app, "msg_type": m.msg_type, "data": dict(m.fields)}
            for m in (item.msg for item in ch.next_items() if isinstance(item, HostPdu))
        ]
        exp = step.get("expect", {})
        problem = check_step(exp, sent, inbox, hb.state, hb.next_deadline())
        if problem:
            return f"step {i} ({do} at {now}): {problem}"
    return None


def check_step(exp: Dict[str, Any], sent, inbox, state: str, deadline) -> Optional[str]:
    if "sent" in exp and (
        len(sent) != len(exp["sent"])
        or not all(pdu_matches(g, e) for g, e in zip(sent, exp["sent"]))
    ):
        return f"sent {sent}"
    if "server_group" in exp and (
        len(inbox) != len(exp["server_group"])
        or not all(pdu_matches(g, e) for g, e in zip(inbox, exp["server_group"]))
    ):
        return f"server_group {inbox}"
    if "state" in exp and state != exp["state"]:
        return f"state {state}"
    if "next_deadline" in exp:
        want = exp["next_deadline"]
        if (want is None) != (deadline is None) or (
            want is not None and abs(deadline - want) > 1e-6
        ):
            return f"next_deadline {deadline}"
    return None


RUNNERS = {"framing": run_framing, "validation": run_validation, "guest": run_guest}


def run_all() -> Tuple[int, List[str]]:
    """(runs, failures): every vector of every kind under every split."""
    runs, failures = 0, []
    for kind in KINDS:
        for vec in load(kind):
            for split in SPLITS if kind != "validation" else (0,):
                runs += 1
                problem = RUNNERS[kind](vec, split)
                if problem:
                    failures.append(f"{kind}: {vec['name']} [split {split}]: {problem}")
    return runs, failures


if __name__ == "__main__":
    total, failed = run_all()
    for line in failed:
        print(line)
    print(json.dumps({"runs": total, "failed": len(failed)}))
