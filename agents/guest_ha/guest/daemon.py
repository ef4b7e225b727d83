"""``guest-ha-guestd``: the guest daemon's event loop, signals, logging and entry point.

A thin, single-threaded I/O shell around :class:`GuestChannel` and
:class:`GuestHeartbeat`: one ``select.poll`` loop drives the port, the app API
socket, the check scripts' pipes and a signal wake-up pipe. Challenges are
answered at once from the cached combined health; checks run on their own
schedule and never delay an answer. Server group PDUs are relayed between the
channel and the app API by :class:`ServerGroupRelay`.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import select
import signal
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import __version__
from ..protocol.channel import GuestChannel, HostPdu, LogRecord
from ..protocol.errors import ProtocolError
from ..protocol.heartbeat import GuestHeartbeat
from ..protocol.messages import HEALTHY, MAX_REASON_CHARS, UNHEALTHY
from .apps import AppRegistry, AppServer
from .checks import CheckRunner
from .config import ConfigError, GuestdConfig, parse_command_line
from .sg import ServerGroupRelay
from .transport import PortLink, port_opener

PROG = "guest-ha-guestd"
LOGGER_NAME = "guest_ha.guestd"
MAX_POLL_S = 1.0
EXIT_FLUSH_S = 1.0


def setup_logging(config: GuestdConfig) -> logging.Logger:
    """Log to stderr or syslog (falling back to stderr when /dev/log is missing)."""
    log = logging.getLogger(LOGGER_NAME)
    for old in list(log.handlers):
        log.removeHandler(old)
    log.propagate = False
    log.setLevel(getattr(logging, config.log_level.upper()))
    fallback_reason = None
    if config.log == "syslog":
        try:
            handler: logging.Handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            handler.setFormatter(
                logging.Formatter(PROG + "[%(process)d]: %(levelname)s %(message)s")
            )
            log.addHandler(handler)
            return log
        except OSError as exc:
            why = exc.strerror or exc
            fallback_reason = f"cannot log to syslog (/dev/log: {why}); using stderr"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s " + PROG + "[%(process)d] %(levelname)s %(message)s")
    )
    log.addHandler(handler)
    if fallback_reason:
        log.warning("%s", fallback_reason)
    return log


class GuestDaemon:
    """One daemon instance: heartbeat channel, port link, checks and app API."""

    def __init__(
        self,
        config: GuestdConfig,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.log = log
        self.clock = clock
        now = clock()
        self.started_at = now
        self.invocation_id = uuid.uuid4().hex
        try:
            self.heartbeat = GuestHeartbeat(
                name=config.name,
                interval_ms=config.interval_ms,
                invocation_id=self.invocation_id,
                corrective_action=config.corrective_action,
            )
        except ProtocolError as exc:
            raise ConfigError(f"heartbeat settings rejected: {exc.message}") from None
        self.channel = GuestChannel(self.heartbeat, now)
        # No host until the port is open and not hung up; host_connected sends init.
        self.heartbeat.host_disconnected(now)
        self.heartbeat.start(now)
        self.channel.tick(now)
        self.link = PortLink(
            config.port,
            port_opener(config.transport, config.port, config.serial_baudrate),
            self.channel,
            log,
        )
        self.checks = CheckRunner(
            config.checks_dir,
            config.check_interval_ms / 1000.0,
            config.check_timeout_ms / 1000.0,
            log,
            now,
        )
        self.registry = AppRegistry(log)
        self.server = AppServer(config.app_socket, self.registry, self.status, log)
        self.sg = ServerGroupRelay(
            self.channel,
            self.server,
            log,
            now,
            host_connected=lambda: self.link.state == PortLink.CONNECTED,
            status_timeout_s=config.sg_status_timeout_ms / 1000.0,
            rate=float(config.sg_rate_per_s),
            burst=float(config.sg_burst),
        )
        self.stop_reason: Optional[str] = None
        self._wake_r = -1
        self._wake_w = -1
        self._last_health: Tuple[str, str] = (HEALTHY, "")
        self._last_state = self.heartbeat.state

    # -- signals -----------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- health ------------------------------------------------------------------------
    def update_health(self, now: float) -> None:
        """Combine checks and apps into the health the next challenge answer carries."""
        problems = [f"check {n}: {r}" for n, r in self.checks.unhealthy()]
        problems += [f"app {n}: {r}" for n, r in self.registry.unhealthy(now)]
        health = UNHEALTHY if problems else HEALTHY
        reason = "; ".join(problems)[:MAX_REASON_CHARS]
        self.heartbeat.set_health(health, reason)
        if (health, reason) != self._last_health:
            if health != self._last_health[0]:
                if health == HEALTHY:
                    self.log.info("health: healthy")
                else:
                    self.log.warning("health: unhealthy (%s)", reason)
            else:
                self.log.debug("health reason: %s", reason)
            self._last_health = (health, reason)

    def status(self, now: float) -> Dict[str, Any]:
        """What the app API's ``status`` op reports (apps are added by the server)."""
        hb = self.heartbeat
        return {
            "daemon": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(now - self.started_at, 3),
                "name": hb.name,
                "invocation_id": hb.invocation_id,
                "port": self.config.port,
                "transport": self.config.transport,
                "port_state": self.link.state,
                "heartbeat_state": hb.state,
                "registered": hb.state == GuestHeartbeat.REGISTERED,
                "requested_interval_ms": hb.interval_ms,
                "effective_interval_ms": hb.effective_interval_ms,
                "corrective_action": hb.corrective_action,
            },
            "health": {"health": hb.health, "healthy": hb.health == HEALTHY, "reason": hb.reason},
            "checks": self.checks.status(now),
            "server_group": self.sg.status(now),
            "counters": {
                "challenges_answered": hb.challenges_answered,
                "bad_frames_from_host": self.channel.bad_frames,
                "server_group_dropped": self.sg.counters["dropped_no_owner"],
                "port": dict(self.link.counters),
                "checks": dict(self.checks.counters),
            },
        }

    # -- loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status."""
        try:
            self.server.start()
        except OSError as exc:
            self.log.error(
                "cannot create app socket %s: %s", self.config.app_socket, exc.strerror or exc
            )
            return 1
        self._install_signals()
        self.log.info(
            "started: name %s, invocation %s, interval %d ms, port %s (%s), "
            "checks %s, app socket %s",
            self.heartbeat.name,
            self.invocation_id,
            self.config.interval_ms,
            self.config.port,
            self.config.transport,
            self.config.checks_dir,
            self.config.app_socket,
        )
        try:
            now = self.clock()
            self.link.tick(now)
            while self.stop_reason is None:
                self.step()
            self.log.info("%s received: deregistering", self.stop_reason)
            self._shutdown(self.stop_reason)
        finally:
            self.server.close()
            self.checks.stop()
            self.link.close()
            self._restore_signals()
        self.log.info("stopped")
        return 0

    def _deadline(self, now: float) -> float:
        times: List[Optional[float]] = [
            now + MAX_POLL_S,
            self.channel.next_deadline(),
            self.link.next_deadline(),
            self.checks.next_deadline(now),
            self.registry.next_deadline(now),
            self.sg.next_deadline(),
        ]
        return min(t for t in times if t is not None)

    def step(self) -> None:
        """One poll and everything it triggers."""
        now = self.clock()
        poller = select.poll()
        routes: Dict[int, Callable[[int, int, float], None]] = {}
        if self._wake_r >= 0:
            poller.register(self._wake_r, select.POLLIN)
            routes[self._wake_r] = self._drain_wake
        for fd, events in self.server.poll_fds():
            poller.register(fd, events)
            routes[fd] = self.server.handle
        for fd, events in self.checks.poll_fds():
            poller.register(fd, events)
            routes[fd] = self.checks.handle
        port = self.link.poll_registration()
        if port is not None:
            poller.register(*port)
        timeout_ms = max(0, int((self._deadline(now) - now) * 1000 + 0.999))
        try:
            ready = poller.poll(timeout_ms)
        except InterruptedError:
            ready = []
        now = self.clock()
        port_events = 0
        for fd, revents in ready:
            if port is not None and fd == port[0]:
                port_events = revents
            elif fd in routes:
                routes[fd](fd, revents, now)
        self.checks.tick(now)
        self.update_health(now)
        if port_events:
            self.link.handle(port_events, now)
        self.link.tick(now)
        self.channel.tick(now)
        self._drain_channel(now)
        self.sg.tick(now)
        self.link.flush(now)
        self.server.flush(now)
        self._after_step()

    def _drain_wake(self, fd: int, revents: int, now: float) -> None:
        try:
            while os.read(fd, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _drain_channel(self, now: float) -> None:
        """The channel's one drain point: server-group PDUs to the relay, events
        and log records to the log."""
        for item in self.channel.next_items():
            if isinstance(item, HostPdu):
                self.sg.handle(item.msg, now)
            elif isinstance(item, LogRecord):
                self.log.info("heartbeat: %s", item.text)
            else:
                self.log.info("heartbeat: %s", item)

    def _after_step(self) -> None:
        self._drain_channel(self.clock())
        if self.heartbeat.state != self._last_state:
            self.log.info("heartbeat state %s -> %s", self._last_state, self.heartbeat.state)
            self._last_state = self.heartbeat.state

    def _shutdown(self, reason: str) -> None:
        """Send ``exit`` and give it up to EXIT_FLUSH_S to leave (best effort)."""
        now = self.clock()
        self.channel.exit(now, reason)
        deadline = now + EXIT_FLUSH_S
        while self.channel.wants_write and self.link.state == PortLink.CONNECTED:
            self.link.flush(now)
            registration = self.link.poll_registration()
            now = self.clock()
            if not self.channel.wants_write or registration is None or now >= deadline:
                break
            poller = select.poll()
            poller.register(registration[0], select.POLLOUT)
            try:
                poller.poll(max(1, int((deadline - now) * 1000)))
            except InterruptedError:
                pass
            now = self.clock()
        if self.channel.wants_write:
            self.log.warning("could not deliver exit to the host")


def _print_config(config: GuestdConfig) -> None:
    for key, value in config.as_dict().items():
        shown = "" if value is None else value
        print(f"{key} = {shown}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``guest-ha-guestd``."""
    try:
        config, check_only = parse_command_line(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if check_only:
        _print_config(config)
        return 0
    log = setup_logging(config)
    try:
        daemon = GuestDaemon(config, log)
    except (ConfigError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
