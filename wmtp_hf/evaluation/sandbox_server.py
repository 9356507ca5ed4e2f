"""Sandbox server: runs untrusted programs, one fresh forked process per program, leaving no process behind.

Started by `sandbox.py` as `python -I sandbox_server.py` (stdlib only). It pre-imports everything once
("zygote") and then serves jobs, one JSON line each on stdin. Per job it forks a *supervisor*, which makes
itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER) so that every descendant of the program — including
double-forked processes that escaped into a new session — is re-parented to it instead of to init. The
supervisor forks the program, waits for it up to the wall-clock deadline, then kills the program's process
group and every remaining descendant, reaping until it has no children left, and writes `status.json`.
The server replies "done" only after the supervisor (and anything re-parented to the server) is gone.

The program child: new session/process group, temporary working directory, rlimits (address space, file
size, processes, CPU, no core dumps) and a reliability guard that disables destructive os/shutil/subprocess functions. In "function" mode it runs the candidate and
then the tests, and only if every test ran without raising it writes the per-run nonce to the report file (with
`os.write` captured before the candidate ran, and the tests executed with a private copy of the builtins).
In "script" mode (stdin/stdout problems) it runs the program as `__main__`; the parent compares stdout.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback

PR_SET_CHILD_SUBREAPER = 36
GUARDED_OS = (
    "kill killpg system popen putenv unsetenv remove removedirs rmdir unlink rename renames replace truncate "
    "ftruncate chmod fchmod lchmod chown fchown lchown chroot chflags lchflags setuid setgid seteuid setegid "
    "setreuid setregid setresuid setresgid fork forkpty vfork execv execve execvp execvpe execl execle execlp "
    "execlp execlpe spawnv spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe posix_spawn posix_spawnp "
    "fchdir link symlink mkfifo mknod plock"
).split()


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no third-party imports in the supervisor)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(name))
                except (OSError, IndexError, ValueError):
                    pass
        return out


def _kill_everything(pgid: int) -> int:
    """SIGKILL the program's group, then every descendant (all re-parented to us, the subreaper), and reap
    until we have no child left. Returns how many processes had to be reaped here (left behind)."""
    me, reaped = os.getpid(), 0
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        for pid in _children(me):
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                reaped += 1
        except ChildProcessError:
            return reaped  # no children at all: nothing is left behind
        time.sleep(0.001)


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    """Wait for `pid` up to `timeout` seconds; return (wait status or None, timed_out)."""
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        left = deadline - time.monotonic()
        if left <= 0:
            return None, True
        if pidfd is not None:
            select.select([pidfd], [], [], left)
        else:
            time.sleep(min(left, 0.005))


def _set_limits(job: dict) -> None:
    """Address-space, file-size, CPU and process limits; no core dumps."""

    def cap(which: int, value: int) -> None:
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, job["memory_bytes"])
    cap(resource.RLIMIT_FSIZE, job["fsize_bytes"])
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_CPU, int(job["timeout"]) + 2)
    if job.get("nproc"):
        cap(resource.RLIMIT_NPROC, job["nproc"])  # binds for non-root users only


def _guard() -> None:
    """Disable destructive functions (in `os` and `posix`, which `os` re-exports) before the candidate runs."""
    import posix
    import shutil
    import subprocess

    os.environ["OMP_NUM_THREADS"] = "1"  # before `putenv` is disabled
    for name in GUARDED_OS:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, None)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, None)
    subprocess.Popen = None  # type: ignore[misc]
    for name in ("ctypes", "_ctypes", "resource", "psutil"):
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` now raises ImportError


def _run_function_mode(job: dict, report_fd: int) -> None:
    """Candidate, then tests in the same namespace with pristine builtins; nonce only after all tests passed."""
    write, nonce = os.write, (job.pop("nonce") + "\n").encode()
    pristine = dict(builtins.__dict__)
    tests = job["tests"]
    namespace: dict = {"__name__": "__candidate__", "__builtins__": builtins}
    stage = "candidate"
    try:
        _guard()
        exec(compile(job["program"], "<candidate>", "exec"), namespace)
        stage = "tests"
        sys.settrace(None)
        sys.setprofile(None)
        namespace["__builtins__"] = dict(pristine)
        if tests["kind"] == "humaneval":
            exec(compile(tests["test"], "<tests>", "exec"), namespace)
            exec(compile(f"check({tests['entry_point']})", "<check>", "exec"), namespace)
        else:
            if tests.get("setup"):
                exec(compile(tests["setup"], "<setup>", "exec"), namespace)
            for i, line in enumerate(tests["asserts"]):
                stage = f"assert {i}"
                exec(compile(line, f"<assert {i}>", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - every way out except the end is a failure
        kind = "FAIL" if isinstance(exc, AssertionError) and stage != "candidate" else "ERROR"
        msg = f"{kind} {stage}: {type(exc).__name__}: {str(exc)[:200]}".replace("\n", " ")
        try:
            write(report_fd, (msg + "\n").encode())
            traceback.print_exc(limit=5)
            sys.stderr.flush()
        finally:
            os._exit(1)
    write(report_fd, nonce)
    os._exit(0)


def _run_script_mode(job: dict) -> None:
    """Run the program as __main__ like `python prog.py` would (threads joined, atexit run, output flushed)."""
    code = 1
    try:
        _guard()
        exec(compile(job["program"], "<program>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        traceback.print_exc(limit=5)
    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        code = code or 1
    os._exit(code)


def _supervise(job: dict) -> None:
    """Supervisor for one program (a fresh fork of the server): fork the program, wait, kill, write status."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    private = job["private"]
    report_fd = os.open(os.path.join(private, "report"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the program child
        try:
            os.setsid()
            stdin = os.open(job["stdin_path"] or os.devnull, os.O_RDONLY)
            out = os.open(os.path.join(private, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open(os.path.join(private, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for fd, target in ((stdin, 0), (out, 1), (err, 2)):
                os.dup2(fd, target)
                os.close(fd)
            os.closerange(3, report_fd)
            os.closerange(report_fd + 1, 65536)
            os.chdir(job["workdir"])
            _set_limits(job)
            if job["mode"] == "function":
                _run_function_mode(job, report_fd)
            else:
                os.close(report_fd)
                _run_script_mode(job)
        finally:
            os._exit(1)
    os.close(report_fd)
    job.pop("nonce", None)
    status, timed_out = _wait(pid, job["timeout"])
    elapsed = time.monotonic() - start
    leftover = _kill_everything(pid) - (1 if timed_out else 0)
    result = {
        "timed_out": timed_out,
        "elapsed": elapsed,
        "exitcode": None,
        "signal": None,
        "leftover": leftover,
    }
    if status is not None:
        if os.WIFEXITED(status):
            result["exitcode"] = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            result["signal"] = os.WTERMSIG(status)
    with open(os.path.join(private, "status.json"), "w") as f:
        json.dump(result, f)


def main() -> None:
    """Serve jobs: one JSON line in on stdin -> fork a supervisor -> one line "done <code>" out on stdout."""
    import posix  # noqa: F401  - pre-import what the guard touches, so each fork starts warm
    import shutil  # noqa: F401
    import subprocess  # noqa: F401

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # safety net
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for line in requests:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                requests.close()
                os.close(replies)
                _supervise(job)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            os._exit(code)
        del job, line
        _, status = os.waitpid(pid, 0)
        _kill_everything(pid)  # anything that escaped a failed supervisor was re-parented to us
        os.write(replies, f"done {os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    main()
