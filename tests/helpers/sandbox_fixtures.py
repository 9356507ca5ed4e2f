"""Helpers the sandbox tests share: finding processes a sandbox started, and the hostile-code preludes."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from wmtp_hf.execution.sandbox import OWNER_ENV, namespaces_unavailable_reason, shutdown_servers

# Bypass the in-process guard (which disables os.fork, subprocess.Popen, ctypes, ...) the way a determined
# program could, so that the OS-level containment is what is tested.
UNGUARD_CTYPES = (
    "import sys\nfor _m in ('ctypes', '_ctypes'):\n    sys.modules.pop(_m, None)\nimport ctypes\n"
)


def exec_sleep(marker: str) -> str:
    """A line that replaces the process with `python -c 'time.sleep(MARKER)'` through libc (after
    UNGUARD_CTYPES and `libc = ctypes.CDLL(None)`): the sandbox's root holds Python, not /bin/sleep."""
    argv = f"(ctypes.c_char_p * 4)(b'python', b'-c', b'import time; time.sleep({marker})', None)"
    return f"libc.execv(sys.executable.encode(), {argv})\n"


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line contains `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def sandbox_processes() -> list[tuple[int, list[str]]]:
    """Live processes started (directly or not) by this process's sandbox servers: they carry OWNER_ENV."""
    mine, me = [], str(os.getpid())
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get(OWNER_ENV) == me:
                mine.append((proc.pid, proc.info["cmdline"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return mine


@pytest.fixture
def no_process_left_behind():
    """After the test and after stopping the idle sandbox servers, no process started by a sandbox lives on."""
    yield
    shutdown_servers()
    time.sleep(0.1)
    assert sandbox_processes() == []
    assert psutil.Process().children(recursive=True) == []


def require_namespaces() -> None:
    """Skip the calling test, with the reason, where programs cannot run under Linux namespaces; fail instead
    where WMTP_REQUIRE_NAMESPACES=1 (CI on Linux: the strong mode must be tested, not skipped)."""
    reason = namespaces_unavailable_reason()
    if reason and os.environ.get("WMTP_REQUIRE_NAMESPACES") == "1":
        pytest.fail(f"Linux namespaces unavailable here ({reason}) but WMTP_REQUIRE_NAMESPACES=1")
    if reason:
        pytest.skip(f"Linux namespaces unavailable here: {reason}")


@pytest.fixture(params=["namespaces", "guard"])
def isolation(request) -> str:
    """Each isolation mode in turn (namespaces skipped where unavailable)."""
    if request.param == "namespaces":
        require_namespaces()
    return request.param
