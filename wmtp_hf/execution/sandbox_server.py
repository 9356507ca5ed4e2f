"""Sandbox server: runs untrusted programs, in fresh forked processes, leaving no process behind.

Started by `sandbox.py` as `python -I sandbox_server.py guard|namespaces TEMP_DIR` (stdlib only;
`namespaces.py` and `remote_calls.py` from this folder are loaded by path). It pre-imports everything once
("zygote") and then serves jobs, one JSON line each on stdin. Per job it forks a *supervisor*, which makes
itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER) so that every descendant of the program — including
double-forked processes that escaped into a new session — is re-parented to it instead of to init. The
supervisor forks the program, waits for it up to the wall-clock deadline, then kills every process group and
remaining descendant, reaping until it has no children left, and writes `status.json`. The server replies
"done" only after the supervisor (and anything re-parented to the server) is gone.

Each sandboxed process: new session, the job's stdin/stdout/stderr and nothing else of the server's
descriptors, rlimits (address space, file size, processes, CPU, no core dumps). "function" mode (HumanEval,
MBPP) forks two: the *candidate's process* (the reliability guard, which disables destructive
os/shutil/subprocess functions, then the program and MBPP's setup code, then `remote_calls.serve_candidate`)
and the *tests' process* (never runs the candidate's code: it reads the tests, the trusted HumanEval prompt
and the nonce from its own file, defines the prompt's helpers itself, binds only the names the trusted tests
need as `remote_calls` proxies over two pipes, and writes the nonce to the report only after every test
passed). "script" mode (stdin/stdout problems) runs the program as `__main__`; the parent
compares stdout.

Isolation "namespaces" (see namespaces.py): at start-up the server enters its worker namespaces (no network,
a root holding only the Python installation, read-only). Per job, the supervisor is PID 1 of a new PID
namespace (the server makes it for its next child and switches back; where it cannot, the job process makes
it and forks the supervisor into it), so the program cannot signal it, and when it exits the kernel kills
whatever is left there. The supervisor enters new mount and IPC namespaces, mounts a private /tmp, /dev/shm and
/proc, and forks the program's processes, which take uids of their own per program (`job_ids`; unless in a user
namespace), drop every capability, join a fresh session keyring and load the seccomp filter
(seccomp_filter.py). The job's files are
opened through a descriptor of the temporary folder taken before any namespace change. Isolation "guard": the
job process is the supervisor. A namespace that cannot be set up is reported as `setup_error` in
status.json; the program does not run.
"""

from __future__ import annotations

import builtins
import ctypes
import importlib.util
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
HERE = os.path.dirname(os.path.abspath(__file__))
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


def _load_sibling(name: str):
    """Import `name`.py from this folder by path (`python -I` leaves this folder off sys.path)."""
    spec = importlib.util.spec_from_file_location(f"_wmtp_sandbox_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


CALLS = _load_sibling("remote_calls")
SECCOMP = _load_sibling("seccomp_filter")
UID_BASE = 2_000_000_000  # programs run as UID_BASE + 2 * slot, their tests' process as that + 1 (`job_ids`)
JOBS_PER_SERVER_CYCLE = 256  # a server's uids repeat after this many programs
PR_SET_DUMPABLE = 4


def _run_candidate(job: dict, requests: int, replies: int) -> None:
    """The candidate's process (function mode): run the program (then MBPP's setup code, which builds objects
    of the program's classes), then answer the tests' calls until they close the pipe."""
    namespace: dict = {"__name__": "__candidate__", "__builtins__": builtins}
    stage = "candidate"
    try:
        _guard()
        exec(compile(job["program"], "<candidate>", "exec"), namespace)
        if job.get("setup"):
            stage = "setup"
            exec(compile(job["setup"], "<setup>", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - the tests report it
        try:
            CALLS.report_failure(replies, stage, exc)
            traceback.print_exc(limit=5)
            sys.stderr.flush()
        finally:
            os._exit(1)
    try:
        CALLS.serve_candidate(namespace, requests, replies)
    finally:
        os._exit(0)


def _run_tests(tests_fd: int, report_fd: int, requests: int, replies: int) -> None:
    """The tests' process (function mode), which never runs a line of the candidate's code: it reads the tests
    and the nonce from its own file, calls the candidate only through `remote_calls` proxies, and writes the
    nonce to the report only after every test ran without raising."""
    with os.fdopen(tests_fd, "rb") as f:
        spec = json.loads(f.read())
    nonce, tests = (spec["nonce"] + "\n").encode(), spec["tests"]
    channel = CALLS.CandidateChannel(requests, replies)
    stage = "candidate"
    try:
        wanted = CALLS.names_the_tests_need(tests)  # from the trusted tests only
        announced = channel.start()  # untrusted: only the wanted names are looked up in it
        namespace: dict = {"__name__": "__tests__", "__builtins__": builtins}
        if tests["kind"] == "humaneval":  # the prompt's helpers, defined here from the trusted prompt
            stage = "prompt"
            exec(compile(tests.get("prompt", ""), "<prompt>", "exec"), namespace)
            namespace.pop(tests["entry_point"], None)  # the prompt's stub: the candidate's or nothing
        CALLS.bind_candidate(namespace, channel, announced, wanted)
        stage = "tests"
        if tests["kind"] == "humaneval":
            exec(compile(tests["test"], "<tests>", "exec"), namespace)
            entry = tests["entry_point"]
            if entry not in namespace:
                raise NameError(f"the program defines no function {entry!r}")
            namespace["check"](namespace[entry])
        else:
            for i, line in enumerate(tests["asserts"]):
                stage = f"assert {i}"
                exec(compile(line, f"<assert {i}>", "exec"), namespace)
        if channel.fatal:  # a failed call the tests caught and ignored still fails the run
            stage = "tests"
            gone = channel.fatal[0].startswith("candidate:")
            raise (CALLS.CandidateGone if gone else CALLS.NonBuiltinResult)(channel.fatal[0])
    except BaseException as exc:  # noqa: BLE001 - every way out except the end is a failure
        if isinstance(exc, CALLS.CandidateGone):
            msg = f"ERROR {exc}"
        else:
            kind = "FAIL" if isinstance(exc, AssertionError) else "ERROR"
            msg = f"{kind} {stage}: {type(exc).__name__}: {str(exc)[:200]}"
        try:
            os.write(report_fd, (msg.replace("\n", " ") + "\n").encode())
            traceback.print_exc(limit=5)
            sys.stderr.flush()
        finally:
            os._exit(1)
    os.write(report_fd, nonce)
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


def _open_job_files(job: dict, base_fd: int) -> dict[str, int]:
    """Open the job's files through `base_fd`, the temporary folder opened before any namespace change (in
    the worker's mount namespace only that descriptor still leads to the host's copy of it). `tests` (function
    mode: the tests and the nonce) is opened here but read only by the tests' process."""
    private, create = job["private_name"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    files = {
        name: os.open(os.path.join(private, name), create, 0o600, dir_fd=base_fd)
        for name in ("status.json", "report", "stdout", "stderr")
    }
    stdin = os.path.join(private, "stdin") if job["stdin_path"] else os.devnull
    files["stdin"] = os.open(stdin, os.O_RDONLY, dir_fd=base_fd)  # an absolute path ignores dir_fd
    if job["mode"] == "function":
        files["tests"] = os.open(os.path.join(private, "tests.json"), os.O_RDONLY, dir_fd=base_fd)
    return files


def _write_status(files: dict[str, int], status: dict) -> None:
    os.write(files["status.json"], json.dumps(status).encode())


def _close_fds_except(keep: tuple[int, ...]) -> None:
    low = 3
    for fd in sorted(set(keep)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def _spawn(
    job: dict, files: dict[str, int], cwd: str, keep: tuple[int, ...], ns, ids, dumpable: bool, run
) -> int:
    """Fork one sandboxed process: own session, the job's stdin/stdout/stderr, only the `keep` descriptors,
    limits, then (namespaces) the uid/gid `ids` and no capabilities; it calls `run()` and never returns."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        for name, target in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
            os.dup2(files[name], target)
        _close_fds_except(keep)
        os.chdir(cwd)
        _set_limits(job)
        if ns is not None:
            ns.drop_privileges(ids, dumpable=dumpable)
            SECCOMP.confine(job["_rules"])  # a fresh session keyring, then the seccomp filter
        elif not dumpable:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        run()
    finally:
        os._exit(1)


def _supervise(job: dict, files: dict[str, int], ns, ids: dict) -> None:
    """Supervisor for one program: fork it (function mode: the candidate's process and the tests' process,
    joined by two pipes), wait, kill, write status. `ns`: the namespaces module when isolating (this process
    is then PID 1 of a fresh PID namespace and builds the file system), else None. `ids`: uid/gid for
    "program" and "tests" (None: keep this process's)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    workdir = job["workdir"]
    if ns is not None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores signals it has no handler for
        try:
            workdir = ns.build_job_filesystem(job["tmp_bytes"], ids["program"])
        except OSError as exc:
            _write_status(files, {"setup_error": str(exc)})
            return
    start = time.monotonic()
    if job["mode"] == "function":
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        program = _spawn(
            job, files, workdir, (requests_r, replies_w), ns, ids["program"], True,
            lambda: _run_candidate(job, requests_r, replies_w),
        )  # fmt: skip
        job.pop("program")
        judge = _spawn(
            job, files, "/", (requests_w, replies_r, files["report"], files["tests"]), ns, ids["tests"], False,
            lambda: _run_tests(files["tests"], files["report"], requests_w, replies_r),
        )  # fmt: skip
        for fd in (requests_r, requests_w, replies_r, replies_w):
            os.close(fd)
    else:
        program = judge = _spawn(
            job, files, workdir, (), ns, ids["program"], True, lambda: _run_script_mode(job)
        )
    for name in ("report", "stdout", "stderr", "stdin", "tests"):
        if name in files:
            os.close(files[name])
    status, timed_out = _wait(judge, job["timeout"])
    elapsed = time.monotonic() - start
    if program != judge and not timed_out:  # the candidate ends when the tests close its pipe
        _wait(program, max(0.0, min(2.0, job["timeout"] - elapsed)))
    leftover = _kill_everything(program) - (1 if timed_out else 0)
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
    _write_status(files, result)


def _run_job(job: dict, isolation: str, base_fd: int, ns, worker_error: str, ids: dict) -> int:
    """The forked job process: open the job's files, then supervise (guard; or namespaces when this process
    already is PID 1 of a fresh PID namespace), or enter the job's namespaces and wait for the supervisor
    forked into them. Returns the exit code."""
    files = _open_job_files(job, base_fd)
    os.close(base_fd)  # the only way back to a writable host folder: gone before anything untrusted runs
    if isolation == "guard":
        _supervise(job, files, None, ids)
        return 0
    in_new_pid_namespace = os.getpid() == 1
    try:
        if worker_error or ns is None:
            raise OSError(worker_error or "namespaces not set up")
        ns.enter_job_namespaces(pid=not in_new_pid_namespace)
    except OSError as exc:
        _write_status(files, {"setup_error": str(exc)})
        return 0
    if in_new_pid_namespace:
        _supervise(job, files, ns, ids)
        return 0
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _supervise(job, files, ns, ids)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        os._exit(code)
    for fd in files.values():
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def job_ids(server_pid: int, job_number: int) -> dict:
    """The uid/gid of a program and of its tests' process (as root, outside a user namespace): a slot of its
    own per program, from the server's pid (unique among live servers, below 2**22) and the job's number, so
    that no two programs running at once share a uid, and a server's programs in a row never do (for
    `JOBS_PER_SERVER_CYCLE` jobs): RLIMIT_NPROC bounds one program, and nothing a program leaves keyed by its
    uid is visible to the next."""
    slot = (server_pid & 0x3FFFFF) * JOBS_PER_SERVER_CYCLE + job_number % JOBS_PER_SERVER_CYCLE
    uid = UID_BASE + 2 * slot  # at most 2e9 + 2**31 - 1 < 2**32 - 1
    return {"program": (uid, uid), "tests": (uid + 1, uid + 1)}


def main() -> None:
    """Serve jobs: one JSON line in on stdin -> fork a supervisor -> one line "done <code>" out on stdout."""
    import posix  # noqa: F401  - pre-import what the guard touches, so each fork starts warm
    import shutil  # noqa: F401
    import subprocess  # noqa: F401

    if len(sys.argv) != 3 or sys.argv[1] not in ("guard", "namespaces"):
        raise SystemExit("usage: sandbox_server.py guard|namespaces TEMP_DIR")
    isolation = sys.argv[1]
    base_fd = os.open(sys.argv[2], os.O_PATH | os.O_DIRECTORY)  # where the parent makes each job's folder
    ns, worker_error, own_pid_ns, rules, own_uids = None, "", None, None, False
    no_ids: dict = {"program": None, "tests": None}
    if isolation == "namespaces":
        try:
            rules = SECCOMP.build()  # before the root is switched: it loads libseccomp
            ns = _load_sibling("namespaces")
            own_uids = (
                not ns.enter_worker_namespaces()
            )  # no user namespace: each program gets uids of its own
            own_pid_ns = ns.pid_namespace_switch()  # None: each job process makes the PID namespace
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without unshare (not Linux)
            worker_error = str(exc) or type(exc).__name__  # every job reports it and does not run
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # safety net
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for number, line in enumerate(requests):
        job = json.loads(line)
        job["_rules"] = rules
        ids = job_ids(os.getpid(), number) if own_uids else no_ids
        if own_pid_ns is not None:
            ns.next_child_in_new_pid_namespace()
        pid = os.fork()
        if own_pid_ns is not None and pid != 0:
            ns.restore_pid_namespace(own_pid_ns)
        if pid == 0:
            code = 0
            try:
                requests.close()
                os.close(replies)
                if own_pid_ns is not None:
                    os.close(own_pid_ns)
                code = _run_job(job, isolation, base_fd, ns, worker_error, ids)
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
