"""Run LocalStack on the host as a plain Python process in its own venv, without Docker.

Stdlib only: the project's pytest conftest imports this under the project's venv, while LocalStack
itself runs from `localstack/.venv` (it pins its own boto3 and moto fork). The recipe and the measured
behaviour are in /work/shared/LOCALSTACK.md.

    python localstack/localstack_host.py start|stop|status [--port N] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

LOCALSTACK_DIR = Path(__file__).resolve().parent
REQUIREMENTS = LOCALSTACK_DIR / "requirements.txt"
DEFAULT_VENV = LOCALSTACK_DIR / ".venv"
DEFAULT_STATE_DIR = LOCALSTACK_DIR / ".state"
DEFAULT_PORT = 4566
HOST = "127.0.0.1"
SERVICES = ("s3", "sqs", "sns")
READY_STATES = frozenset({"running", "available"})
PID_FILE = "localstack.pid"
LOG_FILE = "localstack.log"
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 30
ENTRY_MODULE = "localstack.runtime.main"


def endpoint_url(port: int = DEFAULT_PORT) -> str:
    """Return the LocalStack endpoint URL for a port."""
    return f"http://{HOST}:{port}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # pytest-xdist workers may all try to install or start at once; only one may do it.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _venv_ok(python: Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run([str(python), "-c", f"import {ENTRY_MODULE}"], capture_output=True, check=False)
    return check.returncode == 0


def ensure_venv(venv_dir: Path = DEFAULT_VENV) -> Path:
    """Create LocalStack's own venv from requirements.txt unless it already works; return its python."""
    python = _venv_python(venv_dir)
    if _venv_ok(python):
        return python
    with _file_lock(venv_dir.parent / f".{venv_dir.name}.lock"):
        if _venv_ok(python):  # another process installed it while we waited for the lock
            return python
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
            check=True,
        )
        if not _venv_ok(python):
            raise RuntimeError(
                f"{venv_dir} was installed from {REQUIREMENTS} but `import {ENTRY_MODULE}` still fails; "
                f"delete {venv_dir} and retry, or check the pins (localstack-core 4.13.1 needs Python 3.11+)."
            )
    return python


def health(port: int = DEFAULT_PORT, timeout_s: float = 1.0) -> dict[str, object] | None:
    """Return LocalStack's health JSON on the port, or None if nothing healthy answers."""
    try:
        with urllib.request.urlopen(f"{endpoint_url(port)}/_localstack/health", timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):  # URLError and timeouts are OSErrors; ValueError is bad JSON
        return None
    return body if isinstance(body, dict) else None


def is_ready(port: int = DEFAULT_PORT) -> bool:
    """Return True when s3, sqs and sns all report running or available."""
    body = health(port)
    services = body.get("services") if body else None
    if not isinstance(services, dict):
        return False
    return all(services.get(name) in READY_STATES for name in SERVICES)


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie still has a /proc entry until its parent reaps it; it is gone for our purposes.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_localstack(pid: int) -> bool:
    # A stale pid file may name a reused PID; never signal a process that is not LocalStack.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return ENTRY_MODULE.encode() in cmdline


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float = STOP_TIMEOUT_S) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        # When it leads its own process group (we start it so), its children go too; else only the PID.
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=5)


class Handle:
    """A LocalStack endpoint, and the process behind it when this handle started it."""

    def __init__(self, endpoint: str, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.endpoint = endpoint
        self._proc = proc

    @property
    def pid(self) -> int | None:
        """Return the PID we own, or None when LocalStack was already running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def owned(self) -> bool:
        """Return True if this handle started the process (and so may stop it)."""
        return self._proc is not None

    def stop(self) -> None:
        """SIGTERM the process if we own it, then SIGKILL it after 15 s."""
        if self._proc is None or self._proc.poll() is not None:
            return
        _terminate(self._proc.pid, self._proc)

    def __enter__(self) -> Handle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Handle(endpoint={self.endpoint!r}, pid={self.pid})"


def _environment(port: int, state_dir: Path) -> dict[str, str]:
    env = os.environ.copy()
    # The caller's venv must not leak into LocalStack's (it pins other boto3/moto versions).
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    tmp_dir = state_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "OVERRIDE_IN_DOCKER": "0",  # these sandboxes look like a container; force host mode
            "GATEWAY_SERVER": "hypercorn",  # the default server ignores GATEWAY_LISTEN and binds 0.0.0.0
            "GATEWAY_LISTEN": f"{HOST}:{port}",
            "SERVICES": ",".join(SERVICES),
            "EAGER_SERVICE_LOADING": "1",
            "DNS_ADDRESS": "0",  # else it tries to start a DNS server on port 53
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            "FILESYSTEM_ROOT": str(state_dir),  # keeps the service-catalog cache: warm starts are ~4x faster
            "TMPDIR": str(tmp_dir),
        }
    )
    return env


def _port_free(port: int) -> bool:
    # LocalStack does not exit when its gateway cannot bind; it logs "Ready." and serves nothing.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with log_path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return "(no log)"


def start(
    port: int = DEFAULT_PORT,
    state_dir: Path | None = None,
    timeout_s: float = 60,
    venv_dir: Path = DEFAULT_VENV,
) -> Handle:
    """Return a handle to a ready LocalStack on the port, starting one from the venv if none answers."""
    state_dir = (state_dir or DEFAULT_STATE_DIR).resolve()
    endpoint = endpoint_url(port)
    if is_ready(port):
        return Handle(endpoint)
    python = _venv_python(venv_dir)
    if not python.exists():
        raise RuntimeError(f"{python} is missing: call ensure_venv() first (or run localstack/start.sh).")
    state_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(state_dir / ".start.lock"):
        if is_ready(port):  # another process started it while we waited for the lock
            return Handle(endpoint)
        if not _port_free(port):
            raise RuntimeError(
                f"port {port} is taken by something that is not a ready LocalStack "
                f"(health: {health(port)}); free it (`ss -ltnp | grep :{port}`) or pass another port."
            )
        log_path = state_dir / LOG_FILE
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(python), "-m", ENTRY_MODULE],
                cwd=state_dir,
                env=_environment(port, state_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: a Ctrl-C in the caller does not reach it
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"LocalStack exited with code {proc.returncode} before it was ready on {endpoint} "
                    f"(is the port taken?). Last lines of {log_path}:\n{_log_tail(log_path)}"
                )
            if is_ready(port):
                return Handle(endpoint, proc)
            time.sleep(0.1)
        _terminate(proc.pid, proc, timeout_s=0)
        raise RuntimeError(
            f"LocalStack was not ready on {endpoint} within {timeout_s:g} s ({', '.join(SERVICES)} must be "
            f"running or available). Last lines of {log_path}:\n{_log_tail(log_path)}"
        )


def _pid_file_note(state_dir: Path) -> str:
    pid_file = state_dir / PID_FILE
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if _pid_alive(pid) and _is_localstack(pid):
            return f"pid {pid} from {pid_file}"
    return "not started by start.sh, so stop.sh will not stop it"


def _cmd_start(port: int, state_dir: Path) -> int:
    ensure_venv()
    began = time.monotonic()
    handle = start(port=port, state_dir=state_dir)
    if handle.pid is None:
        print(f"LocalStack already running at {handle.endpoint}, {_pid_file_note(state_dir)}")
    else:
        (state_dir / PID_FILE).write_text(f"{handle.pid}\n")
        took = time.monotonic() - began
        print(f"LocalStack started at {handle.endpoint} in {took:.1f} s, pid {handle.pid}")
        print(f"log: {state_dir / LOG_FILE}")
    print(f"export AWS_ENDPOINT_URL={handle.endpoint}")
    return 0


def _cmd_stop(state_dir: Path) -> int:
    pid_file = state_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        print(f"no usable pid file at {pid_file}: nothing started by start.sh to stop")
        return 0
    if not _pid_alive(pid) or not _is_localstack(pid):
        print(f"pid {pid} from {pid_file} is not a running LocalStack; removing the stale pid file")
        pid_file.unlink(missing_ok=True)
        return 0
    _terminate(pid, None)
    pid_file.unlink(missing_ok=True)
    print(f"LocalStack pid {pid} stopped")
    return 0


def _cmd_status(port: int) -> int:
    body = health(port)
    if body is None:
        print(f"nothing healthy answers at {endpoint_url(port)}/_localstack/health")
        return 1
    print(json.dumps(body, indent=2))
    return 0 if is_ready(port) else 1


def main(argv: list[str] | None = None) -> int:
    """Run the start/stop/status command line."""
    parser = argparse.ArgumentParser(description="Run LocalStack on the host without Docker.")
    parser.add_argument("command", choices=("venv", "start", "stop", "status"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    if args.command == "venv":
        print(f"LocalStack virtualenv ready: {ensure_venv()}")
        return 0
    if args.command == "start":
        return _cmd_start(args.port, state_dir)
    if args.command == "stop":
        return _cmd_stop(state_dir)
    return _cmd_status(args.port)


if __name__ == "__main__":
    sys.exit(main())
