"""Report origin check: a compute host may only report the VMs it runs.

The sending host is the broker user the message was published with, which
RabbitMQ validated (``guest_ha.messaging.identity``): user
``<compute_user_prefix><host>`` is compute host ``<host>``.  The body's
``compute_host`` must name that same host, and the instance must live there:

- ``mode = nova``: the server's ``OS-EXT-SRV-ATTR:host`` (admin API), or the
  destination of its in-progress migration, cached ``nova_cache_s``; a cached
  answer that disagrees is re-read once before a report is rejected;
- ``mode = membership`` (standalone): the VM lists the compute agents send
  (``vm_states``, themselves authenticated).  An instance is bound to the first
  host that listed it and moves only once that host's full list no longer
  has it, so a host cannot claim a VM another host still runs.

A report that fails is *rejected*: acknowledged (an honest host never sends
it, retrying cannot help), logged with the instance UUID, counted, and never
stored, so no reporter sees it.  A report that cannot be decided now (Nova
unreachable, an instance no host listed yet) is left unacknowledged: it stays
in the agent's spool and is offered again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from oslo_config import cfg

from ..messaging.identity import sender_user

LOG = logging.getLogger("guest_ha.controller.origin")

#: ``[report_origin]`` options.
report_origin_opts = [
    cfg.StrOpt(
        "mode",
        default="off",
        choices=[
            ("off", "trust the host named in the report (single-host, all-in-one)"),
            ("nova", "the instance's host according to the Nova API ([reporter_nova] creds)"),
            ("membership", "the VM lists compute agents send (standalone)"),
        ],
        help="How the controller checks that a reported instance lives on the host "
        "that sent the report. Anything but off also requires each compute host to "
        "use its own broker user, <compute_user_prefix><host>.",
    ),
    cfg.StrOpt(
        "compute_user_prefix",
        default="guest-ha-compute-",
        help="Broker user <prefix><host> is compute host <host>; a report from "
        "another user is rejected.",
    ),
    cfg.FloatOpt(
        "nova_cache_s",
        default=10.0,
        min=0.0,
        help="mode=nova: how long an instance's host is cached.",
    ),
]

REASONS = ("unauthenticated", "host_mismatch", "not_on_host", "unknown_instance")


class Undecided(Exception):
    """The check cannot be made now (source unreachable); try again later."""


class NovaLocator:
    """Where Nova says an instance runs (admin ``GET /servers/{id}``), cached."""

    def __init__(
        self,
        session: Any,
        *,
        region: Optional[str] = None,
        interface: str = "public",
        endpoint_override: Optional[str] = None,
        cache_s: float = 10.0,
        timeout: float = 10.0,
    ) -> None:
        self.session = session
        self.cache_s = cache_s
        self.timeout = timeout
        self.endpoint_filter = {
            "service_type": "compute",
            "interface": interface,
            "region_name": region,
        }
        self.endpoint_override = endpoint_override or None
        self._cache: Dict[str, Tuple[float, Optional[Set[str]]]] = {}
        self._lock = threading.Lock()
        self.api_calls = 0

    def _get(self, path: str) -> Any:
        self.api_calls += 1
        try:
            response = self.session.get(
                path,
                endpoint_filter=self.endpoint_filter,
                endpoint_override=self.endpoint_override,
                headers={"OpenStack-API-Version": "compute 2.23"},
                raise_exc=False,
                timeout=self.timeout,
            )
        except Exception as exc:  # unreachable, auth failure, catalog missing
            raise Undecided(f"Nova unreachable: {exc}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise Undecided(f"Nova answered {response.status_code} for {path}")
        return response.json()

    def _lookup(self, uuid: str) -> Optional[Set[str]]:
        body = self._get(f"/servers/{uuid}")
        if body is None:
            return None
        server = body.get("server") or {}
        hosts = {h for h in [server.get("OS-EXT-SRV-ATTR:host")] if isinstance(h, str) and h}
        if server.get("OS-EXT-STS:task_state") in ("migrating", "resize_migrating"):
            # During a live migration both ends run it; the destination may report.
            found = self._get(f"/servers/{uuid}/migrations") or {}
            for mig in found.get("migrations") or []:
                for key in ("dest_compute", "source_compute"):
                    if isinstance(mig.get(key), str):
                        hosts.add(mig[key])
        return hosts

    def hosts(self, uuid: str, fresh: bool = False) -> Optional[Set[str]]:
        """Hosts the instance may be reported from; None if Nova has no such server."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(uuid)
        if cached is not None and not fresh and now - cached[0] < self.cache_s:
            return cached[1]
        hosts = self._lookup(uuid)
        with self._lock:
            self._cache[uuid] = (now, hosts)
            if len(self._cache) > 100_000:  # bounded: drop the oldest half
                for key, _ in sorted(self._cache.items(), key=lambda kv: kv[1][0])[:50_000]:
                    del self._cache[key]
        return hosts


class MembershipLocator:
    """Instance -> host from the compute agents' authenticated VM lists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bound: Dict[str, str] = {}
        self.listed: Dict[str, Set[str]] = {}

    def observe(self, host: str, uuids: Iterable[str], full: bool) -> None:
        """``host``'s VMs (all of them when ``full``) from its ``vm_states``."""
        with self._lock:
            current = set(uuids)
            if full:
                self.listed[host] = current
            else:
                self.listed.setdefault(host, set()).update(current)
            for uuid in current:
                owner = self.bound.get(uuid)
                if owner is None or owner == host or uuid not in self.listed.get(owner, ()):
                    if owner not in (None, host):
                        LOG.info("[instance %s] moved from %s to %s", uuid, owner, host)
                    self.bound[uuid] = host
                else:
                    LOG.warning(
                        "[instance %s] listed by %s but still runs on %s: not moved",
                        uuid,
                        host,
                        owner,
                    )

    def hosts(self, uuid: str, fresh: bool = False) -> Optional[Set[str]]:
        with self._lock:
            owner = self.bound.get(uuid)
        if owner is None:
            raise Undecided("no compute host has listed it yet")
        return {owner}


class OriginCheck:
    """Screens reports by sender before the event store sees them."""

    def __init__(self, mode: str, compute_user_prefix: str, locator: Any = None) -> None:
        if mode != "off" and locator is None:
            raise ValueError(f"[report_origin] mode={mode} needs a locator")
        self.mode = mode
        self.prefix = compute_user_prefix
        self.locator = locator
        self.rejected: Counter = Counter({reason: 0 for reason in REASONS})
        self.undecided = 0
        self._count_lock = threading.Lock()  # RPC methods run on several threads

    def _count(self, reason: Optional[str]) -> None:
        with self._count_lock:
            if reason is None:
                self.undecided += 1
            else:
                self.rejected[reason] += 1

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def sender_host(self, ctxt: Optional[Mapping[str, Any]]) -> Optional[str]:
        """The compute host whose broker user sent the message, if any."""
        user = sender_user(ctxt)
        if user is None or not user.startswith(self.prefix) or user == self.prefix:
            return None
        return user[len(self.prefix) :]

    def host_ok(self, ctxt: Optional[Mapping[str, Any]], claimed: Any, what: str) -> bool:
        """True when ``claimed`` is the authenticated sender (always when off)."""
        if not self.enabled:
            return True
        sender = self.sender_host(ctxt)
        if sender is not None and sender == claimed:
            return True
        self._count("unauthenticated" if sender is None else "host_mismatch")
        LOG.warning("%s for host %r from broker user %r rejected", what, claimed, sender_user(ctxt))
        return False

    def observe_vm_states(self, host: str, vms: Any, full: bool) -> None:
        if isinstance(self.locator, MembershipLocator) and isinstance(vms, list):
            uuids = [
                v["uuid"] for v in vms if isinstance(v, dict) and isinstance(v.get("uuid"), str)
            ]
            self.locator.observe(host, uuids, full)

    def screen(
        self, ctxt: Optional[Mapping[str, Any]], events: List[Dict[str, Any]]
    ) -> Tuple[List[Dict[str, Any]], List[Tuple[Dict[str, Any], str]], List[Dict[str, Any]]]:
        """Split well-formed ``events`` into (accepted, [(rejected, reason)], undecided)."""
        if not self.enabled:
            return list(events), [], []
        accepted: List[Dict[str, Any]] = []
        rejected: List[Tuple[Dict[str, Any], str]] = []
        undecided: List[Dict[str, Any]] = []
        sender = self.sender_host(ctxt)
        for event in events:
            try:
                reason = self._reason(sender, event)
            except Undecided as exc:
                self._count(None)
                LOG.warning(
                    "[instance %s] %s from %s not decided yet (kept in its spool): %s",
                    event["instance_uuid"],
                    event["kind"],
                    sender,
                    exc,
                )
                undecided.append(event)
                continue
            if reason is None:
                accepted.append(event)
                continue
            self._count(reason)
            rejected.append((event, reason))
            LOG.error(
                "[instance %s] %s rejected: %s (sender %r, report says host %r)",
                event["instance_uuid"],
                event["kind"],
                reason,
                sender_user(ctxt),
                event.get("compute_host"),
            )
        return accepted, rejected, undecided

    def _reason(self, sender: Optional[str], event: Dict[str, Any]) -> Optional[str]:
        if sender is None:
            return "unauthenticated"
        if event.get("compute_host", sender) != sender:
            return "host_mismatch"
        uuid = event["instance_uuid"]
        calls = getattr(self.locator, "api_calls", None)
        hosts = self.locator.hosts(uuid)
        if hosts is not None and sender in hosts:
            return None
        if calls is not None and calls == self.locator.api_calls:
            hosts = self.locator.hosts(uuid, fresh=True)  # a cached answer may be stale
        if hosts is None:
            return "unknown_instance"
        return None if sender in hosts else "not_on_host"


def build_origin_check(conf: Any) -> OriginCheck:
    """The check ``[report_origin]`` asks for (Nova credentials from ``[reporter_nova]``)."""
    opts = conf.report_origin
    locator: Any = None
    if opts.mode == "nova":
        from ..cloud_session import session_from_clouds_yaml

        nova = conf.reporter_nova
        locator = NovaLocator(
            session_from_clouds_yaml(nova.clouds_yaml, nova.cloud),
            region=nova.region,
            interface=nova.interface,
            endpoint_override=nova.endpoint_override,
            cache_s=opts.nova_cache_s,
            timeout=nova.timeout_s,
        )
    elif opts.mode == "membership":
        locator = MembershipLocator()
    return OriginCheck(opts.mode, opts.compute_user_prefix, locator)
