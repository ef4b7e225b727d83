"""Check scripts: run every executable in a directory, in parallel, without blocking.

Each round starts every executable regular file of ``checks_dir`` (names
starting with ``.`` are skipped) that is not still running from an earlier
round. Exit status 0 means healthy. A check that outlives its time limit is
killed with its whole process group and counts as unhealthy. The time limit
counts only time the daemon saw pass: a gap in its own ticks longer than
``CLOCK_JUMP_S`` (the VM was paused and the clock jumped) extends the deadline of
every running check by that gap. And a check that times out after a healthy run
(or on its first run) is run once more at once; only a second timeout in a row
is reported. A pause of the VM is thus never reported as a slow check, and a
hung check is reported after at most twice its time limit. Output (stdout and
stderr together) is captured up to a bound; its first line goes into the reason.

The caller's event loop polls :meth:`CheckRunner.poll_fds`, passes events to
:meth:`CheckRunner.handle`, and calls :meth:`CheckRunner.tick` no later than
:meth:`CheckRunner.next_deadline`.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import stat
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

MAX_OUTPUT_BYTES = 4096
MAX_CHECKS = 64
REASON_CHARS = 200
_EXIT_POLL_S = 0.02
_RUNNING_POLL_S = 0.2
CLOCK_JUMP_S = 0.5
"""A tick this much later than :meth:`CheckRunner.next_deadline` asked for means the
daemon did not run meanwhile (VM paused from outside, host stall, migration): that
time is not charged to the checks that were running."""


@dataclass
class CheckResult:
    """Outcome of a check's last completed run."""

    healthy: bool
    reason: str
    exit_code: Optional[int]
    duration_ms: int
    finished_at: float

    def as_dict(self, now: float) -> Dict[str, object]:
        return {
            "healthy": self.healthy,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "duration_ms": self.duration_ms,
            "age_ms": int((now - self.finished_at) * 1000),
        }


class _Run:
    def __init__(self, name: str, proc: "subprocess.Popen[bytes]", started: float, deadline: float):
        self.name = name
        self.proc = proc
        self.started = started
        self.deadline = deadline
        self.output = bytearray()
        self.truncated = False
        self.pipe_open = proc.stdout is not None
        self.retry = False
        """This run re-runs a check whose previous run timed out after a healthy one."""
        self.fd = proc.stdout.fileno() if proc.stdout is not None else -1

    def read_pipe(self) -> None:
        """Drain what is readable now; keep at most MAX_OUTPUT_BYTES."""
        while self.pipe_open:
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close_pipe()
                return
            room = MAX_OUTPUT_BYTES - len(self.output)
            if room > 0:
                self.output += chunk[:room]
            if len(chunk) > room:
                self.truncated = True

    def close_pipe(self) -> None:
        if self.pipe_open and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.pipe_open = False

    def first_line(self) -> str:
        text = self.output.decode("utf-8", "replace").strip()
        line = text.splitlines()[0].strip() if text else ""
        return "".join(c if c.isprintable() else " " for c in line)[:REASON_CHARS]


class CheckRunner:
    """Runs the check scripts of one directory on a schedule."""

    def __init__(
        self,
        checks_dir: str,
        interval_s: float,
        timeout_s: float,
        log: logging.Logger,
        now: float,
    ) -> None:
        self.checks_dir = checks_dir
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.log = log
        self.results: Dict[str, CheckResult] = {}
        self.running: Dict[str, _Run] = {}
        self._reaping: "List[subprocess.Popen[bytes]]" = []
        self._next_round = now
        self._dir_problem: Optional[str] = None
        self._too_many_logged = False
        self.counters = {
            "rounds": 0,
            "runs": 0,
            "failures": 0,
            "timeouts": 0,
            "timeouts_retried": 0,
            "clock_jumps": 0,
        }
        self._expected_tick: Optional[float] = None

    # -- discovery -------------------------------------------------------------------
    def discover(self) -> List[str]:
        """Names of the runnable checks, sorted; a missing directory means none."""
        try:
            names = sorted(os.listdir(self.checks_dir))
        except FileNotFoundError:
            self._note_dir(None)
            return []
        except OSError as exc:
            self._note_dir(f"cannot list checks_dir {self.checks_dir}: {exc.strerror}")
            return []
        self._note_dir(None)
        found: List[str] = []
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(self.checks_dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
                continue
            found.append(name)
        if len(found) > MAX_CHECKS:
            if not self._too_many_logged:
                self.log.warning(
                    "%d checks in %s; only the first %d run",
                    len(found),
                    self.checks_dir,
                    MAX_CHECKS,
                )
                self._too_many_logged = True
            found = found[:MAX_CHECKS]
        return found

    def _note_dir(self, problem: Optional[str]) -> None:
        if problem != self._dir_problem:
            self._dir_problem = problem
            if problem:
                self.log.warning("%s", problem)

    # -- scheduling ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self._discount_clock_jump(now)
        for run in list(self.running.values()):
            code = run.proc.poll()
            if code is not None:
                run.read_pipe()
                self._finish(run, code, now)
            elif now >= run.deadline:
                self._kill(run, now)
        self._reaping = [p for p in self._reaping if p.poll() is None]
        if now >= self._next_round:
            self._next_round = max(self._next_round + self.interval_s, now)
            self._start_round(now)

    def next_deadline(self, now: float) -> float:
        """When :meth:`tick` must run next (soon while scripts run: exits are polled)."""
        times = [self._next_round]
        for run in self.running.values():
            times.append(run.deadline)
            times.append(now + (_RUNNING_POLL_S if run.pipe_open else _EXIT_POLL_S))
        if self._reaping:
            times.append(now + _RUNNING_POLL_S)
        deadline = min(times)
        self._expected_tick = deadline if self.running else None
        return deadline

    def _discount_clock_jump(self, now: float) -> None:
        """Extend running checks' deadlines by the lateness of this tick."""
        expected, self._expected_tick = self._expected_tick, None
        if expected is None or now - expected <= CLOCK_JUMP_S:
            return
        gap = now - expected
        for run in self.running.values():
            run.deadline += gap
        if gap > CLOCK_JUMP_S:
            self.counters["clock_jumps"] += 1
            self.log.info(
                "clock jumped %.1f s while %d check(s) ran (VM paused?): not charged to them",
                gap,
                len(self.running),
            )

    def _start_round(self, now: float) -> None:
        self.counters["rounds"] += 1
        names = self.discover()
        for gone in set(self.results) - set(names) - set(self.running):
            del self.results[gone]
        for name in names:
            if name not in self.running:
                self._start(name, now)

    def _start(self, name: str, now: float) -> None:
        path = os.path.join(self.checks_dir, name)
        try:
            proc = subprocess.Popen(
                [path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
        except OSError as exc:
            self._record(name, False, f"cannot run: {exc.strerror or exc}", None, 0, now)
            return
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self.counters["runs"] += 1
        self.running[name] = _Run(name, proc, now, now + self.timeout_s)

    # -- event loop hooks -------------------------------------------------------------
    def poll_fds(self) -> List[Tuple[int, int]]:
        return [(r.fd, select.POLLIN) for r in self.running.values() if r.pipe_open]

    def owns(self, fd: int) -> bool:
        return any(r.pipe_open and r.fd == fd for r in self.running.values())

    def handle(self, fd: int, revents: int, now: float) -> None:
        for run in list(self.running.values()):
            if run.pipe_open and run.fd == fd:
                run.read_pipe()
                if not run.pipe_open:
                    # EOF usually means the script is exiting: reap it soon.
                    code = run.proc.poll()
                    if code is not None:
                        self._finish(run, code, now)
                return

    # -- completion --------------------------------------------------------------------
    def _finish(self, run: _Run, code: int, now: float) -> None:
        run.close_pipe()
        del self.running[run.name]
        line = run.first_line()
        if code == 0:
            reason = ""
        elif code < 0:
            reason = f"killed by signal {-code}"
        else:
            reason = f"exit {code}"
        if code != 0 and line:
            reason += f": {line}"
        self._record(run.name, code == 0, reason, code, int((now - run.started) * 1000), now)

    def _kill(self, run: _Run, now: float) -> None:
        self.counters["timeouts"] += 1
        try:
            os.killpg(run.proc.pid, signal.SIGKILL)
        except OSError:
            try:
                run.proc.kill()
            except OSError:
                pass
        run.read_pipe()
        run.close_pipe()
        del self.running[run.name]
        self._reaping.append(run.proc)
        previous = self.results.get(run.name)
        if not run.retry and (previous is None or previous.healthy):
            # A VM paused from outside can stretch a check past its limit in ways
            # the guest's clock does not show: confirm with one fresh run first.
            self.counters["timeouts_retried"] += 1
            self.log.info(
                "check %s timed out after %d ms; running it again before reporting it",
                run.name,
                int(self.timeout_s * 1000),
            )
            self._start(run.name, now)
            if run.name in self.running:
                self.running[run.name].retry = True
            return
        line = run.first_line()
        reason = f"timed out after {int(self.timeout_s * 1000)} ms"
        if line:
            reason += f": {line}"
        self._record(run.name, False, reason, None, int((now - run.started) * 1000), now)

    def _record(
        self,
        name: str,
        healthy: bool,
        reason: str,
        code: Optional[int],
        duration_ms: int,
        now: float,
    ) -> None:
        previous = self.results.get(name)
        self.results[name] = CheckResult(healthy, reason, code, duration_ms, now)
        if not healthy:
            self.counters["failures"] += 1
        if previous is None or previous.healthy != healthy:
            if healthy:
                self.log.info("check %s: healthy", name)
            else:
                self.log.warning("check %s: unhealthy (%s)", name, reason)

    # -- summary -----------------------------------------------------------------------
    def unhealthy(self) -> List[Tuple[str, str]]:
        """(name, reason) of every check whose last run failed."""
        return [(n, r.reason) for n, r in sorted(self.results.items()) if not r.healthy]

    def status(self, now: float) -> List[Dict[str, object]]:
        out: List[Dict[str, object]] = []
        for name in sorted(set(self.results) | set(self.running)):
            entry: Dict[str, object] = {"name": name, "running": name in self.running}
            result = self.results.get(name)
            if result is not None:
                entry.update(result.as_dict(now))
            else:
                entry.update({"healthy": None, "reason": "not run yet"})
            out.append(entry)
        return out

    def stop(self) -> None:
        """Kill whatever still runs (daemon shutdown)."""
        for run in list(self.running.values()):
            try:
                os.killpg(run.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            run.close_pipe()
            self._reaping.append(run.proc)
        self.running.clear()
        for proc in self._reaping:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        self._reaping = []
