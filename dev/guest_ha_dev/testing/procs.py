"""Process supervision for the test cloud: run a command logged, start a service
(gunicorn or plain) in its own process group, wait for it, stop it by PID."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from guest_ha_dev.testing.openstack_assets import ASSETS_DIR


def _log(msg: str) -> None:
    sys.stderr.write(f"[openstack-fixture] {msg}\n")
    sys.stderr.flush()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _run_logged(
    argv: Sequence[str],
    log: Any,
    what: str,
    *,
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 600,
    input_text: Optional[str] = None,
) -> str:
    """Run ``argv``; its output is appended to ``log`` and returned.  Raise with
    the output's tail when it fails."""
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    started = time.monotonic()
    proc = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        input=input_text,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    log.write(proc.stdout)
    log.write(f"# exit {proc.returncode} after {time.monotonic() - started:.2f} s\n")
    log.flush()
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise CloudStartError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _clean_env() -> Dict[str, str]:
    """The caller's environment minus anything that points into its own venv."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    return env


def _write_ini(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> None:
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    for section, values in sections.items():
        if section != "DEFAULT":
            parser.add_section(section)
        for key, value in values.items():
            parser.set(section, key, str(value))
    with open(path, "w") as handle:
        parser.write(handle)


def _merge(
    base: Dict[str, Dict[str, Any]], extra: Optional[Mapping[str, Mapping[str, Any]]]
) -> Dict[str, Dict[str, Any]]:
    for section, values in (extra or {}).items():
        base.setdefault(section, {}).update(values)
    return base


class CloudStartError(RuntimeError):
    """A service could not be installed, set up or started."""


def _http(
    method: str,
    url: str,
    body: Any = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = 30,
) -> Tuple[int, Mapping[str, str], Any]:
    """Tiny JSON HTTP client (stdlib), for set-up and readiness checks."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status, hdrs = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status, hdrs = exc.code, dict(exc.headers)
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, hdrs, payload


class _VenvService:
    """A service process run from its venv in its own process group, logging to
    ``log_path``; ``port`` is where it serves HTTP, if it does."""

    def __init__(
        self,
        name: str,
        venv: Path,
        log_path: Path,
        env: Optional[Mapping[str, str]] = None,
        port: Optional[int] = None,
    ):
        self.name = name
        self.venv = venv
        self.log_path = log_path
        self.env = dict(env or {})
        self.port = port
        self.proc: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} serves no HTTP"
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start ``argv`` with the venv's ``bin`` first on ``PATH``."""
        env = {**_clean_env(), **env}  # the service venv must not see the caller's venv
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise CloudStartError(
                f"{self.name} exited with {self.proc.returncode}; "
                f"log {self.log_path}:\n{_tail(self.log_path)}"
            )

    def wait_ready(self, path: str, deadline: float, ok: Callable[[int], bool]) -> float:
        """Poll ``GET path`` until ``ok(status)``; return seconds waited."""
        started = time.monotonic()
        last = "no answer"
        while True:
            self.check_alive()
            try:
                status, _, _ = _http("GET", self.url + path, timeout=5)
                if ok(status):
                    return time.monotonic() - started
                last = f"HTTP {status}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise CloudStartError(
                    f"{self.name} not ready at {self.url}{path} ({last}); "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.2)


class GunicornService(_VenvService):
    """One WSGI service under gunicorn in its venv, in its own process group.

    gunicorn runs with ``--no-control-socket`` and loads ``gha_wsgi_shim``
    (from ``openstack_assets``), which trims ``sys.argv`` and then imports
    ``wsgi_target`` (``module:attribute``).  ``stop()`` signals the process
    group whose leader is the PID we started (SIGINT, then SIGKILL), so
    gunicorn's workers go too.
    """

    def __init__(
        self,
        name: str,
        venv: Path,
        wsgi_target: str,
        port: int,
        log_path: Path,
        env: Optional[Mapping[str, str]] = None,
        threads: int = 4,
    ):
        super().__init__(name, venv, log_path, env, port)
        self.wsgi_target = wsgi_target
        self.threads = threads

    def start(self) -> None:
        argv = [
            str(self.venv / "bin" / "gunicorn"),
            "--no-control-socket",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            "1",
            "--threads",
            str(self.threads),
            "--timeout",
            "300",
            "--graceful-timeout",
            "3",
            "--pythonpath",
            ASSETS_DIR,
            "--name",
            f"gha-{self.name}",
            "gha_wsgi_shim:application",
        ]
        self._spawn(argv, {**self.env, "GHA_WSGI_TARGET": self.wsgi_target})

    def stop(self, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        # SIGINT is gunicorn's quick shutdown (SIGTERM waits for requests).
        _stop_group(proc, signal.SIGINT, timeout)


def _stop_group(proc: Optional[subprocess.Popen], first: int, timeout: float) -> None:
    """Stop the process group led by ``proc``: ``first``, then SIGKILL; then kill any
    worker that outlived its master (they share its process group)."""
    if proc is None:
        return
    for sig, wait in ((first, timeout), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class ProcessService(_VenvService):
    """A plain (non-WSGI) service process in its venv, in its own process group
    (``vitrage-graph``, ``vitrage-persistor``).  ``stop()`` signals the group
    whose leader is the PID we started: SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        venv: Path,
        argv: Sequence[str],
        log_path: Path,
        env: Optional[Mapping[str, str]] = None,
        port: Optional[int] = None,
    ):
        super().__init__(name, venv, log_path, env, port)
        self.argv = list(argv)

    def start(self) -> None:
        self._spawn([str(self.venv / "bin" / self.argv[0]), *self.argv[1:]], self.env)

    def stop(self, timeout: float = 5) -> None:
        proc, self.proc = self.proc, None
        _stop_group(proc, signal.SIGTERM, timeout)
