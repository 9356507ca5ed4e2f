"""Run one untrusted program in a sandboxed process (parent side of `sandbox_server.py`).

A pool of warm `python -I sandbox_server.py` servers (one per concurrently running call, each in its own
session) forks a fresh supervisor + program process per job, so a program costs a fork, not an interpreter
start-up. Per job the parent makes a private temporary directory holding `work/` (the program's cwd),
`stdin`, and the files the server writes back: `stdout`, `stderr`, `report` (the harness's nonce) and
`status.json` (exit code / signal / timed out). The directory is removed afterwards.
"""

from __future__ import annotations

import atexit
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
from dataclasses import dataclass
from pathlib import Path

SERVER = Path(__file__).with_name("sandbox_server.py")
GRACE_S = 10.0
OWNER_ENV = "WMTP_SANDBOX_PARENT"  # extra time a server gets to clean up before the parent kills it


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. Memory is address space (RLIMIT_AS); output files are capped by RLIMIT_FSIZE.
    `max_processes` is RLIMIT_NPROC, which the kernel does not enforce for root."""

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


class _Server:
    """One warm sandbox server process; used by one thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
            cwd=tempfile.gettempdir(),
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


_IDLE: queue.SimpleQueue[_Server] = queue.SimpleQueue()


def _take_server() -> _Server:
    while True:
        try:
            server = _IDLE.get_nowait()
        except queue.Empty:
            return _Server()
        if server.alive():
            return server
        server.kill()


@atexit.register
def shutdown_servers() -> None:
    """Stop every idle server (they would also exit on EOF when this process ends)."""
    while True:
        try:
            _IDLE.get_nowait().kill()
        except queue.Empty:
            return


def run_sandboxed(
    program: str,
    *,
    mode: str,
    tests: dict | None = None,
    stdin: str | None = None,
    limits: SandboxLimits = SandboxLimits(),
) -> RawRun:
    """Run `program` in the sandbox. mode "function": candidate + `tests` (humaneval/asserts kinds) with the
    nonce protocol; mode "script": run as `__main__` with `stdin` (or /dev/null) as standard input."""
    if mode not in ("function", "script"):
        raise ValueError(f"mode: expected 'function' or 'script', got {mode!r}")
    private = Path(tempfile.mkdtemp(prefix="wmtp_eval_"))
    try:
        (private / "work").mkdir()
        stdin_path = None
        if stdin is not None:
            stdin_path = private / "stdin"
            stdin_path.write_text(stdin)
        nonce = secrets.token_hex(16)
        job = {
            "mode": mode,
            "program": program,
            "tests": tests,
            "nonce": nonce,
            "private": str(private),
            "workdir": str(private / "work"),
            "stdin_path": str(stdin_path) if stdin_path else None,
            "timeout": float(limits.timeout_s),
            "memory_bytes": limits.memory_mb << 20,
            "fsize_bytes": limits.file_size_mb << 20,
            "nproc": limits.max_processes,
        }
        server = _take_server()
        reply = server.run(job, limits.timeout_s + GRACE_S)
        if reply.startswith("done") and server.alive():
            _IDLE.put(server)
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
        if not status:
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
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
