"""Check-script runner: real tiny shell scripts in tmp_path, driven by a poll loop."""

from __future__ import annotations

import logging
import os
import select
import time

import pytest

from guest_ha.guest.checks import CheckRunner

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test.guest.checks")


def _script(directory, name, body, mode=0o755):
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, mode)
    return path


def _alive(pid):
    """True while ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _runner(path, interval=0.2, timeout=2.0):
    return CheckRunner(str(path), interval, timeout, LOG, time.monotonic())


def _drive(runner, until, timeout=5.0):
    """Run the runner's loop until ``until()`` is true; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        now = time.monotonic()
        poller = select.poll()
        for fd, events in runner.poll_fds():
            poller.register(fd, events)
        wait = max(0.0, min(runner.next_deadline(now), end) - now)
        for fd, revents in poller.poll(int(wait * 1000) + 1):
            runner.handle(fd, revents, time.monotonic())
        runner.tick(time.monotonic())
        if until():
            return
    raise AssertionError("condition not reached in time")


def test_pass_and_fail(tmp_path):
    _script(tmp_path, "ok.sh", "echo fine; exit 0")
    _script(tmp_path, "bad.sh", "echo 'disk full on /var'; echo second line; exit 3")
    runner = _runner(tmp_path)
    _drive(runner, lambda: len(runner.results) == 2)
    assert runner.results["ok.sh"].healthy
    bad = runner.results["bad.sh"]
    assert not bad.healthy
    assert bad.exit_code == 3
    assert bad.reason == "exit 3: disk full on /var"
    assert runner.unhealthy() == [("bad.sh", "exit 3: disk full on /var")]


def test_stderr_is_captured(tmp_path):
    _script(tmp_path, "err.sh", "echo oops >&2; exit 1")
    runner = _runner(tmp_path)
    _drive(runner, lambda: "err.sh" in runner.results)
    assert runner.results["err.sh"].reason == "exit 1: oops"


def test_timeout_kills_process_group(tmp_path):
    marker = tmp_path / "child.pid"
    _script(tmp_path, "hang.sh", f"echo working; sleep 30 & echo $! > {marker}; wait")
    runner = _runner(tmp_path, interval=10, timeout=0.3)
    started = time.monotonic()
    _drive(runner, lambda: "hang.sh" in runner.results)
    assert time.monotonic() - started < 2.0
    result = runner.results["hang.sh"]
    assert not result.healthy
    assert result.reason.startswith("timed out after 300 ms")
    assert runner.counters["timeouts"] == 2  # the first timeout is confirmed by a re-run
    assert runner.counters["timeouts_retried"] == 1
    child = int(marker.read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not _alive(child):
            break
        time.sleep(0.02)
    else:
        pytest.fail("grandchild of a timed-out check still alive")
    runner.stop()


def test_non_executable_and_dot_files_skipped(tmp_path):
    _script(tmp_path, "noexec.sh", "exit 1", mode=0o644)
    _script(tmp_path, ".hidden", "exit 1")
    (tmp_path / "subdir").mkdir()
    _script(tmp_path, "real", "exit 0")
    runner = _runner(tmp_path)
    assert runner.discover() == ["real"]


def test_missing_dir_means_no_checks(tmp_path):
    runner = _runner(tmp_path / "absent")
    runner.tick(time.monotonic())
    assert runner.discover() == []
    assert runner.unhealthy() == []
    assert runner.running == {}


def test_checks_run_in_parallel(tmp_path):
    for i in range(4):
        _script(tmp_path, f"slow{i}", "sleep 0.4")
    runner = _runner(tmp_path, interval=10)
    started = time.monotonic()
    _drive(runner, lambda: len(runner.results) == 4)
    assert time.monotonic() - started < 1.2
    assert all(r.healthy for r in runner.results.values())


def test_background_child_holding_pipe_does_not_delay(tmp_path):
    _script(tmp_path, "bg.sh", "sleep 5 & exit 0")
    runner = _runner(tmp_path, interval=10)
    started = time.monotonic()
    _drive(runner, lambda: "bg.sh" in runner.results)
    assert time.monotonic() - started < 1.5
    assert runner.results["bg.sh"].healthy
    runner.stop()


def test_output_is_bounded(tmp_path):
    _script(tmp_path, "loud.sh", "head -c 1000000 /dev/zero | tr '\\0' x; exit 1")
    runner = _runner(tmp_path, interval=10)
    _drive(runner, lambda: "loud.sh" in runner.results)
    result = runner.results["loud.sh"]
    assert not result.healthy
    assert result.reason.startswith("exit 1: xxx")
    assert len(result.reason) < 300


def test_recovery_and_removed_check(tmp_path):
    flag = tmp_path / "flag"
    checks = tmp_path / "checks"
    checks.mkdir()
    _script(checks, "flag.sh", f"test ! -e {flag}")
    runner = _runner(checks, interval=0.1)
    _drive(runner, lambda: "flag.sh" in runner.results)
    assert runner.results["flag.sh"].healthy
    flag.write_text("x")
    _drive(runner, lambda: not runner.results["flag.sh"].healthy)
    flag.unlink()
    _drive(runner, lambda: runner.results["flag.sh"].healthy)
    (checks / "flag.sh").unlink()
    _drive(runner, lambda: "flag.sh" not in runner.results)


def test_status_lists_checks(tmp_path):
    _script(tmp_path, "ok.sh", "exit 0")
    runner = _runner(tmp_path)
    _drive(runner, lambda: "ok.sh" in runner.results)
    (entry,) = runner.status(time.monotonic())
    assert entry["name"] == "ok.sh"
    assert entry["healthy"] is True
    assert entry["exit_code"] == 0


def test_clock_jump_across_a_slow_check_is_not_a_timeout(tmp_path):
    """The VM is paused for 3 s (its clock jumps) while a 0.5 s check runs under a
    2 s limit: the check is not killed and stays healthy."""
    _script(tmp_path, "slow.sh", "sleep 0.5")
    runner = CheckRunner(str(tmp_path), 10.0, 2.0, LOG, 100.0)
    runner.tick(100.0)
    assert "slow.sh" in runner.running
    assert runner.next_deadline(100.0) <= 100.2
    runner.tick(103.0)  # resumed: 3 s of "time" passed in no real time
    assert "slow.sh" in runner.running, runner.results
    assert runner.counters["clock_jumps"] == 1
    resumed = time.monotonic()
    while "slow.sh" not in runner.results and time.monotonic() < resumed + 5:
        fake = 103.0 + time.monotonic() - resumed  # the clock runs normally again
        runner.next_deadline(fake)
        time.sleep(0.05)
        runner.tick(103.0 + time.monotonic() - resumed)
    assert runner.results["slow.sh"].healthy, runner.results["slow.sh"]
    assert runner.counters["timeouts"] == 0
    runner.stop()


def test_a_hung_check_is_reported_after_a_confirming_rerun(tmp_path):
    """Ticked on time, a hung check times out at 2 s, is run again at once, and
    its second timeout (at 4 s) is reported: no clock jump is involved."""
    _script(tmp_path, "hang.sh", "sleep 30")
    runner = CheckRunner(str(tmp_path), 10.0, 2.0, LOG, 100.0)
    runner.tick(100.0)
    fake = 100.0
    while "hang.sh" not in runner.results and fake < 105.0:
        fake = runner.next_deadline(fake)
        runner.tick(fake)
    assert not runner.results["hang.sh"].healthy
    assert runner.results["hang.sh"].reason.startswith("timed out after 2000 ms")
    assert runner.counters["clock_jumps"] == 0
    assert runner.counters["timeouts_retried"] == 1
    assert 104.0 <= fake < 104.3
    # Once unhealthy, a further timeout is reported without a re-run.
    runner._next_round = fake
    runner.tick(fake)
    end = fake + 2.5
    while fake < end:
        fake = runner.next_deadline(fake)
        runner.tick(fake)
    assert runner.counters["timeouts_retried"] == 1 and runner.counters["timeouts"] == 3
    runner.stop()
