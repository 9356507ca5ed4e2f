"""Run one untrusted program in a sandboxed process (parent side of `sandbox_server.py`).

A pool of warm `python -I sandbox_server.py` servers per isolation mode (one per concurrently running call,
each in its own session) forks fresh supervisor + program processes per job, so a program costs a few forks,
not an interpreter start-up. Per job the parent makes a private temporary directory holding `work/` (the
program's cwd under the guard), `stdin`, `tests.json` (function mode: the tests and the nonce, read only by
the tests' process) and the files the server writes back: `stdout`, `stderr`, `report` (the tests' verdict
and nonce) and `status.json` (exit code / signal / timed out). The directory is removed afterwards.

Isolation: "namespaces", the default (Linux namespaces, a root holding only Python, a uid of its own per
program, no capabilities, a seccomp filter; see namespaces.py and seccomp_filter.py), or "guard", only when
asked for (process containment and disabled functions; ISOLATION_GAPS says what it does not protect).
`resolve_isolation` fails closed: where a probe program cannot run under namespaces, it raises (one line) and
nothing runs. docs/sandbox.md describes both.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

SERVER = Path(__file__).with_name("sandbox_server.py")
GRACE_S = 10.0  # extra time a server gets to clean up before the parent kills it
OWNER_ENV = "WMTP_SANDBOX_PARENT"
ISOLATION_MODES = ("namespaces", "guard")  # the first is the default
ACCEPT_GUARD = "--isolation guard (experiment config: evaluation.isolation: guard)"
PROBE_PROGRAM = "import os\nprint(os.getpid())\n"  # PID 2: the program under its supervisor, PID 1
ISOLATION_GAPS = {  # what each mode does not protect (summary.json's "isolation_gaps"; docs/sandbox.md)
    "namespaces": (
        "the program can read the Python installation and the system library folders (read-only)",
        "CPU is bounded per program by the timeout, not shared fairly between programs",
        "run as a non-root user (a user namespace mapping one uid), every program keeps that uid",
    ),
    "guard": (
        "files: the program can read and write every file the evaluating user can (as root: every file), "
        "including its own run's tests and nonce, and secrets such as tokens and keys",
        "network: the program can connect to anything the host can reach",
        "processes: the program can signal and trace the evaluating user's processes (as root: all), "
        "including its own tests' process",
        "process count: RLIMIT_NPROC does not bind root, so as root a fork storm is bounded only by the timeout",
        "/tmp and /dev/shm are the host's: a program can leave files for the next one",
        "kernel state: no seccomp filter, one uid for all programs, the evaluator's session keyring: "
        "a program can read the evaluator's keys and leave keys for the next program",
    ),
}


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. Memory is address space (RLIMIT_AS); output files are capped by RLIMIT_FSIZE.
    `max_processes` is RLIMIT_NPROC: under namespaces each program runs as a uid of its own (or, in a user
    namespace, the one mapped uid), so it bounds that program's processes; under the guard it binds only
    when the evaluating user is not root. Under namespaces the private /tmp and /dev/shm are each capped at
    `file_size_mb` in total."""

    timeout_s: float = 10.0
    memory_mb: int = 2048
    file_size_mb: int = 64
    max_processes: int = 256


@dataclass
class RawRun:
    """What happened to one sandboxed program, before any pass/fail decision."""

    reported: bool  # the harness wrote this run's nonce (function mode)
    report: str  # other text on the report channel (e.g. "FAIL assert 1: AssertionError: ...")
    timed_out: bool
    exitcode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    elapsed_s: float
    leftover: int = 0  # processes still running after the program ended (killed by the supervisor)
    supervisor_error: str = ""
    isolation: str = "guard"  # the mode it ran under


class _Server:
    """One warm sandbox server process; used by one thread at a time."""

    def __init__(self, isolation: str, temp_dir: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(SERVER), isolation, temp_dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
            cwd=temp_dir,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                OWNER_ENV: str(os.getpid()),  # lets tools (and tests) find every process a sandbox started
            },
        )

    def run(self, job: dict, deadline_s: float) -> str:
        """Send one job; return the reply line, or "" if the server died or missed the deadline."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return ""
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline_s)
        if not ready:
            return ""
        return self.proc.stdout.readline().decode(errors="replace").strip()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass


_IDLE: collections.defaultdict[tuple[str, str], queue.SimpleQueue[_Server]] = collections.defaultdict(
    queue.SimpleQueue
)  # idle servers by (isolation, temporary folder)


def _take_server(key: tuple[str, str]) -> _Server:
    while True:
        try:
            server = _IDLE[key].get_nowait()
        except queue.Empty:
            return _Server(*key)
        if server.alive():
            return server
        server.kill()


@atexit.register
def shutdown_servers() -> None:
    """Stop every idle server (they would also exit on EOF when this process ends)."""
    for idle in list(_IDLE.values()):
        while True:
            try:
                idle.get_nowait().kill()
            except queue.Empty:
                break


_PROBE_LOCK = threading.Lock()
_PROBE: list[str] = []  # [reason namespaces are unavailable, "" when they are], once probed


def namespaces_unavailable_reason() -> str:
    """Why programs cannot run under namespaces here ("" when they can). Probed once per process by running
    a tiny program under them and checking that it really was PID 2 of a fresh PID namespace."""
    with _PROBE_LOCK:
        if not _PROBE:
            if not sys.platform.startswith("linux"):
                _PROBE.append(f"Linux namespaces do not exist on {sys.platform}")
            else:
                _PROBE.append(_probe_namespaces())
        return _PROBE[0]


def _probe_namespaces() -> str:
    """Run the probe program twice on one server (the second run is the steady state of a warm server)."""
    for _ in range(2):
        raw = run_sandboxed(PROBE_PROGRAM, mode="script", isolation="namespaces")
        seen = raw.stdout.decode(errors="replace").strip()
        if raw.supervisor_error:
            return raw.supervisor_error.removeprefix("namespaces unavailable: ")
        if seen != "2" or raw.exitcode != 0:
            return f"the probe program ran as PID {seen or '?'} (exit code {raw.exitcode})"
    return ""


def resolve_isolation(requested: str, where: str = "--isolation") -> str:
    """Check the mode programs will run under: "namespaces" (the default, the strong mode) or "guard" (asked for
    explicitly). Fails closed: "namespaces" where it cannot be had raises ValueError, one line naming the reason
    and `where`'s weaker choice; nothing ever falls back to the guard on its own."""
    if requested not in ISOLATION_MODES:
        raise ValueError(f"{where}: expected one of {', '.join(ISOLATION_MODES)}, got {requested!r}")
    if requested == "guard":
        return "guard"
    reason = namespaces_unavailable_reason()
    if reason:
        raise ValueError(
            f"{where} namespaces: the strong sandbox is unavailable here ({reason}); nothing was run. To accept "
            f"the weaker guard, use {ACCEPT_GUARD} (docs/sandbox.md)"
        )
    return "namespaces"


def run_sandboxed(
    program: str,
    *,
    mode: str,
    tests: dict | None = None,
    stdin: str | None = None,
    limits: SandboxLimits = SandboxLimits(),
    isolation: str = "namespaces",
) -> RawRun:
    """Run `program` in the sandbox. mode "function": candidate + `tests` (humaneval/asserts kinds) with the
    nonce protocol; mode "script": run as `__main__` with `stdin` (or /dev/null) as standard input.
    `isolation`: "namespaces" or "guard", used as given (callers check it first with `resolve_isolation`)."""
    if mode not in ("function", "script"):
        raise ValueError(f"mode: expected 'function' or 'script', got {mode!r}")
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation: expected one of {', '.join(ISOLATION_MODES)}, got {isolation!r}")
    temp_dir = tempfile.gettempdir()
    private = Path(tempfile.mkdtemp(prefix="wmtp_eval_", dir=temp_dir))
    try:
        (private / "work").mkdir()
        stdin_path = None
        if stdin is not None:
            stdin_path = private / "stdin"
            stdin_path.write_text(stdin)
        nonce = secrets.token_hex(16)
        if mode == "function":  # read by the tests' process only: the candidate's never sees tests or nonce
            fd = os.open(private / "tests.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"tests": tests, "nonce": nonce}, f)
        job = {
            "mode": mode,
            "program": program,
            "setup": (tests or {}).get("setup", "") if mode == "function" else "",
            "private_name": private.name,
            "workdir": str(private / "work"),
            "stdin_path": str(stdin_path) if stdin_path else None,
            "timeout": float(limits.timeout_s),
            "memory_bytes": limits.memory_mb << 20,
            "fsize_bytes": limits.file_size_mb << 20,
            "tmp_bytes": limits.file_size_mb << 20,
            "nproc": limits.max_processes,
        }
        server = _take_server((isolation, temp_dir))
        reply = server.run(job, limits.timeout_s + GRACE_S)
        if reply.startswith("done") and server.alive():
            _IDLE[isolation, temp_dir].put(server)
        else:
            server.kill()
        supervisor_error = "" if reply == "done 0" else f"sandbox server failed ({reply or 'no reply'})"

        def read(name: str, limit: int | None = None) -> bytes:
            path = private / name
            if not path.is_file():
                return b""
            data = path.read_bytes()
            return data if limit is None else data[-limit:]

        try:
            status = json.loads(read("status.json") or b"null") or {}
        except json.JSONDecodeError:
            status = {}
        if status.get("setup_error"):
            supervisor_error = f"namespaces unavailable: {status['setup_error']}"
        elif not status:
            supervisor_error = supervisor_error or "sandbox wrote no status"
        report_lines = read("report", 1 << 16).decode(errors="replace").splitlines()
        return RawRun(
            reported=nonce in report_lines,
            report="\n".join(line for line in report_lines if line != nonce)[:2000],
            timed_out=bool(status.get("timed_out", False)),
            exitcode=status.get("exitcode"),
            signal=status.get("signal"),
            stdout=read("stdout"),
            stderr=read("stderr", 4000),
            elapsed_s=float(status.get("elapsed", 0.0)),
            leftover=int(status.get("leftover", 0)),
            supervisor_error=supervisor_error,
            isolation=isolation,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
