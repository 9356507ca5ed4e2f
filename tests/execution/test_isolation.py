"""Isolation modes: under Linux namespaces a hostile program changes nothing outside; the guard still works.

The attacks bypass the in-process guard (raw libc calls through ctypes), so that what stops them is the
namespace boundary. Where the guard alone lets an attack through, the test shows that too: it is the
reference that the namespace tests could fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from sandbox_fixtures import UNGUARD_CTYPES, require_namespaces

from wmtp_hf import evaluate
from wmtp_hf.evaluation import check_solutions
from wmtp_hf.evaluation.problems import Problem
from wmtp_hf.evaluation.runner import score_samples
from wmtp_hf.evaluation.samples import Sample
from wmtp_hf.execution import sandbox as sandbox_module
from wmtp_hf.execution.sandbox import run_sandboxed

ASSERTS = json.dumps({"kind": "asserts", "setup": "", "asserts": ["assert add(1, 2) == 3"]})
GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
LIBC = UNGUARD_CTYPES + "import os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
RAISE_ON_FAILURE = (
    "def call(what, result):\n"
    "    if result != 0:\n"
    "        raise OSError(ctypes.get_errno(), what + ': ' + os.strerror(ctypes.get_errno()))\n"
)


@pytest.fixture
def namespaces() -> None:
    require_namespaces()


@pytest.fixture(params=["private tmp", "repository"])
def canary_dir(request, tmp_path):
    """A folder outside the sandbox holding canary.txt = "precious": under the host's temporary directory
    (hidden by the program's private /tmp) or inside this repository (read-only to the program)."""
    if request.param == "private tmp":
        folder = tmp_path
    else:
        folder = Path(tempfile.mkdtemp(prefix=".canary-", dir=Path(__file__).resolve().parent))
    (folder / "canary.txt").write_text("precious")
    yield folder
    if request.param == "repository":
        shutil.rmtree(folder)


def _attacks(folder: Path) -> dict[str, str]:
    canary, new = str(folder / "canary.txt"), str(folder / "new.txt")
    return {
        "write a new file": f"open({new!r}, 'w').write('x')\n",
        "overwrite": f"open({canary!r}, 'w').write('pwned')\n",
        "append": f"open({canary!r}, 'a').write('pwned')\n",
        "delete": LIBC + RAISE_ON_FAILURE + f"call('unlink', libc.unlink({canary.encode()!r}))\n",
        "rename": LIBC + RAISE_ON_FAILURE + f"call('rename', libc.rename({canary.encode()!r}, b'/tmp/x'))\n",
        "remount / writable": LIBC
        + RAISE_ON_FAILURE
        + "call('mount', libc.mount(None, b'/', None, 0x20 | 0x1000, None))\n"  # MS_REMOUNT | MS_BIND
        + f"open({canary!r}, 'w').write('pwned')\n",
        "new user namespace, then remount": LIBC
        + RAISE_ON_FAILURE
        + "call('unshare', libc.unshare(0x10000000 | 0x20000))\n"  # CLONE_NEWUSER | CLONE_NEWNS
        + "call('mount', libc.mount(None, b'/', None, 0x20 | 0x1000, None))\n"
        + f"open({canary!r}, 'w').write('pwned')\n",
    }


def test_writing_overwriting_deleting_outside_fail_and_change_nothing(namespaces, canary_dir):
    attacks = _attacks(canary_dir)
    results = check_solutions(
        [ASSERTS] * len(attacks), [a + GOOD for a in attacks.values()], timeout_s=5, isolation="namespaces"
    )
    assert [r.passed for r in results] == [False] * len(attacks), dict(zip(attacks, results, strict=True))
    assert sorted(p.name for p in canary_dir.iterdir()) == ["canary.txt"]
    assert (canary_dir / "canary.txt").read_text() == "precious"
    # the reference: the guard alone lets a plain overwrite through
    guarded = check_solutions([ASSERTS], [attacks["overwrite"] + GOOD], timeout_s=5, isolation="guard")
    assert guarded[0].passed and (canary_dir / "canary.txt").read_text() == "pwned"


def _listener() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    return server


def _connect_program(port: int) -> str:
    return f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"


def test_connecting_to_a_listener_on_localhost_fails(namespaces):
    with _listener() as server:
        port = server.getsockname()[1]
        result = check_solutions(
            [ASSERTS], [_connect_program(port) + GOOD], timeout_s=5, isolation="namespaces"
        )[0]
        assert not result.passed and "unreachable" in result.detail.lower(), result
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
        # the reference: under the guard alone the same program reaches the listener
        guarded = check_solutions([ASSERTS], [_connect_program(port) + GOOD], timeout_s=5, isolation="guard")[
            0
        ]
        assert guarded.passed
        server.setblocking(True)
        server.settimeout(5)
        server.accept()[0].close()


def _sandbox_servers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "sandbox_server.py" in " ".join(p.cmdline())]


def test_killing_the_parent_or_this_process_fails(namespaces):
    run_sandboxed("pass\n", mode="script", isolation="namespaces")  # a warm server to aim at
    servers = _sandbox_servers()
    targets = {"parent": "os.getppid()", "tester": str(os.getpid())}
    targets.update({f"server {p.pid}": str(p.pid) for p in servers})
    code = LIBC + "".join(
        f"print({name!r}, libc.kill({pid}, {int(signal.SIGKILL)}), ctypes.get_errno(), flush=True)\n"
        for name, pid in targets.items()
    )
    raw = run_sandboxed(code, mode="script", isolation="namespaces")
    assert raw.supervisor_error == "" and raw.exitcode == 0, raw  # the supervisor survived and reported
    outcome = {line.rsplit(" ", 2)[0]: line.rsplit(" ", 2)[1:] for line in raw.stdout.decode().splitlines()}
    # PID 1 of its namespace, running as root while the program does not (EPERM); in a user namespace with
    # one uid, the kernel drops the signal
    assert outcome.pop("parent") in (["-1", "1"], ["0", "0"])
    assert all(result == ["-1", "3"] for result in outcome.values()), outcome  # ESRCH: not visible inside
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers)
    # the reference: under the guard alone the program kills its supervisor
    guarded = run_sandboxed(LIBC + "libc.kill(os.getppid(), 9)\n", mode="script", isolation="guard")
    assert guarded.supervisor_error


def _expected_root() -> list[str]:
    """The top-level names of the program's root: the first component of each path it holds of the host
    (computed here from the same rule, independently of the sandbox), plus dev, proc and tmp."""
    from wmtp_hf.execution import namespaces as ns

    return sorted({p.split("/")[1] for p in ns.root_paths()} | {"dev", "proc", "tmp"})


def _python_in_tmp() -> list[str]:
    """The names in /tmp of a Python installation under /tmp (a venv made there), else nothing."""
    from wmtp_hf.execution import namespaces as ns

    return sorted({p.split("/")[2] for p in ns.tmp_paths(ns.root_paths())})


def test_processes_files_and_capabilities_seen_inside(namespaces):
    shm, tmp = f"/dev/shm/{uuid.uuid4().hex}", f"/tmp/{uuid.uuid4().hex}"
    code = (
        "import os\n"
        "print(os.getpid(), os.getppid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "print(sorted(os.listdir('/dev')), sorted(os.listdir('/')), os.getcwd())\n"
        f"open({shm!r}, 'w').write('x'); open({tmp!r}, 'w').write('x'); open('here', 'w').write('x')\n"
        "print(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'))\n"
    )
    first = run_sandboxed(code, mode="script", isolation="namespaces")
    lines = first.stdout.decode().splitlines()
    assert first.exitcode == 0 and lines[0] == "2 1 [1, 2]", first
    assert lines[1] == "0000000000000000"  # no capabilities at all
    assert (
        lines[2] == "['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'urandom', 'zero'] "
        f"{_expected_root()} /tmp/work"
    )
    python_in_tmp = _python_in_tmp()  # a venv under /tmp is shown above the private /tmp
    assert lines[3] == f"{sorted([tmp[5:], 'work', *python_in_tmp])} [{shm[9:]!r}]"
    assert not Path(shm).exists() and not Path(tmp).exists()  # private to the program
    # the next program (same warm server) starts from empty /tmp and /dev/shm again
    second = run_sandboxed(
        "import os\nprint(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'), os.listdir())\n",
        mode="script",
        isolation="namespaces",
    )
    assert second.stdout.decode().strip() == f"{sorted(['work', *python_in_tmp])} [] []"


def test_namespaces_is_the_default_and_the_summary_says_so(namespaces):
    problems = [Problem("t/0", "", ASSERTS, "", ())]
    for requested in (None, "namespaces", "guard"):
        options = {} if requested is None else {"isolation": requested}
        rows, summary = score_samples(
            problems, [Sample("t/0", GOOD), Sample("t/0", WRONG)], ks=[1], progress=False, **options
        )
        assert summary["isolation"] == (requested or "namespaces") and [r["passed"] for r in rows] == [
            True,
            False,
        ]
        assert summary["isolation_gaps"] == list(sandbox_module.ISOLATION_GAPS[summary["isolation"]])


def test_guard_mode_still_works_when_forced():
    results = check_solutions([ASSERTS] * 3, [GOOD, WRONG, "import os\nos._exit(0)\n"], isolation="guard")
    assert [r.status for r in results] == ["passed", "failed", "error"]
    raw = run_sandboxed("import os\nprint(os.getpid())\n", mode="script", isolation="guard")
    assert raw.isolation == "guard" and int(raw.stdout) > 2  # no PID namespace of its own


def test_namespaces_unavailable_fails_closed_with_one_line(tmp_path, monkeypatch, capsys):
    """Where the strong mode cannot be had, evaluate, check_solutions, score_samples and the experiment stop
    before running anything, with one line naming the reason and the option that accepts the guard."""
    from wmtp_hf.experiment.study import run_experiment
    from wmtp_hf.train.config import ConfigError

    monkeypatch.setattr(sandbox_module, "_PROBE", ["unshare: Operation not permitted"])
    ran: list = []
    monkeypatch.setattr(sandbox_module, "_take_server", lambda key: ran.append(key))  # nothing may run
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    args = [
        "--samples",
        str(samples),
        "--dataset",
        "humaneval",
        "--limit",
        "1",
        "--output",
        str(tmp_path / "o"),
    ]
    for extra in ([], ["--isolation", "namespaces"]):
        assert evaluate.main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --isolation namespaces: "), err
        for words in ("unshare: Operation not permitted", "nothing was run", "--isolation guard"):
            assert words in err
        assert "evaluation.isolation: guard" in err  # the experiment config's key
        assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"^isolation namespaces: .*unshare: Operation not permitted"):
        check_solutions([ASSERTS], [GOOD])
    with pytest.raises(ValueError, match="--isolation guard"):
        score_samples([Problem("t/0", "", ASSERTS, "", ())], [Sample("t/0", GOOD)], ks=[1], progress=False)
    stage = SimpleNamespace(stage="baseline", config=SimpleNamespace(dataset="humaneval"))
    plan = SimpleNamespace(
        evaluation=SimpleNamespace(isolation="namespaces"), stages=[stage], output_dir=tmp_path / "experiment"
    )
    with pytest.raises(ConfigError, match=r"^evaluation.isolation namespaces: .*evaluation.isolation: guard"):
        run_experiment(plan)
    assert not (tmp_path / "experiment").exists() and ran == []
    monkeypatch.undo()
    # asked for explicitly, the guard runs, and the summary says so and lists its gaps
    assert evaluate.main([*args, "--isolation", "guard"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["isolation"] == "guard" and summary["isolation_gaps"] == list(
        sandbox_module.ISOLATION_GAPS["guard"]
    )


PYTHON_CHECK = (  # recent enough, and able to start itself again (the sandbox server) with the stdlib
    "import subprocess, sys\nassert sys.version_info >= (3, 11)\n"
    "subprocess.run([sys.executable, '-I', '-c', 'import json, ctypes'], check=True)\n"
)


def _python_for(uid: int) -> str | None:
    """A Python >= 3.11 that user `uid` can run (this one usually lives under /root)."""
    for exe in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if exe:
            probe = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", exe, "-I", "-c"]
            check = subprocess.run([*probe, PYTHON_CHECK], capture_output=True)
            if check.returncode == 0:
                return exe
    return None


USERNS_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules["sandbox"] = sandbox
spec.loader.exec_module(sandbox)
reason = sandbox.namespaces_unavailable_reason()
raw = sandbox.run_sandboxed(sys.argv[2], mode="script", isolation="namespaces") if not reason else None
print(json.dumps({"reason": reason, "stdout": raw and raw.stdout.decode(), "error": raw and raw.supervisor_error}))
"""


def test_unprivileged_user_namespaces():
    """As a non-root user (nobody), the sandbox enters a user namespace first; the boundary is the same."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the sandbox as an unprivileged user")
    python = _python_for(65534)
    if python is None:
        pytest.skip("no Python >= 3.11 that user nobody can run")
    folder = Path(tempfile.mkdtemp(dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    folder.chmod(0o777)
    canary = folder / "canary.txt"
    canary.write_text("precious")
    canary.chmod(0o666)  # writable by nobody outside the sandbox
    program = (
        "import os\nprint(os.getpid(), os.getuid())\n"
        f"try:\n    open({str(canary)!r}, 'w').write('pwned')\nexcept OSError as exc:\n    print(exc.errno)\n"
    )
    try:
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-c", USERNS_SCRIPT,
             sandbox_module.__file__, program],
            capture_output=True, text=True, timeout=60, cwd=folder,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        if seen["reason"]:
            pytest.skip(f"unprivileged user namespaces unavailable here: {seen['reason']}")
        assert seen["error"] == "" and seen["stdout"].split() == [
            "2",
            "65534",
            "2",
        ]  # ENOENT: not in its root
        assert canary.read_text() == "precious"
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize(
    "use_mount_setattr", [True, False], ids=["mount_setattr", "remount each (Linux < 5.12)"]
)
def test_worker_mount_namespace_is_read_only(namespaces, use_mount_setattr):
    """The worker's file system, built in a forked child: a root holding only the Python installation (the
    project is not there), every mount read-only (with mount_setattr, and with the remount-each fallback for
    older kernels), a minimal /dev, no /run."""
    from wmtp_hf.execution import namespaces as ns

    folder = Path(tempfile.mkdtemp(prefix=".canary-", dir=Path(__file__).resolve().parent))
    canary = folder / "canary.txt"
    canary.write_text("precious")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            ns.enter_worker_namespaces(use_mount_setattr=use_mount_setattr)
            seen = {
                "dev": sorted(os.listdir("/dev")),
                "run": os.listdir("/run") if os.path.isdir("/run") else [],
                "root": sorted(os.listdir("/")),
                "etc": os.listdir("/etc"),
            }
            python = os.path.join(sys.prefix, "pwned.txt")
            writes = (
                ("canary", canary),
                ("new", folder / "new.txt"),
                ("sys", "/sys/kernel/x"),
                ("python", python),
            )
            for name, path in writes:
                try:
                    with open(path, "w") as f:
                        f.write("pwned")
                    seen[name] = "written"
                except OSError as exc:
                    seen[name] = exc.errno
            os.write(write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        seen = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    try:
        assert seen["dev"] == [
            "fd",
            "full",
            "null",
            "random",
            "shm",
            "stderr",
            "stdin",
            "stdout",
            "urandom",
            "zero",
        ]
        assert (
            seen["run"] == [] and seen["canary"] == seen["new"] == 2
        )  # ENOENT: the project is not in the root
        assert seen["root"] == _expected_root() and seen["etc"] == ["ld.so.cache"]
        assert seen["python"] == 30  # the Python installation is there, read-only (EROFS)
        assert seen["sys"] in (2, 13, 30)  # never written
        assert canary.read_text() == "precious" and sorted(p.name for p in folder.iterdir()) == ["canary.txt"]
    finally:
        shutil.rmtree(folder)


VENV_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox", sys.argv[1])  # by path: no model imports
sandbox = importlib.util.module_from_spec(spec)
sys.modules["sandbox"] = sandbox
spec.loader.exec_module(sandbox)
reason = sandbox.namespaces_unavailable_reason()
out = {"prefix": sys.prefix, "reason": reason}
if not reason or sys.argv[3] == "guard":
    raw = sandbox.run_sandboxed(sys.argv[2], mode="script", isolation=sys.argv[3])
    out.update(stdout=raw.stdout.decode(), error=raw.supervisor_error, exitcode=raw.exitcode)
    tests = {"kind": "asserts", "setup": "", "asserts": ["assert add(1, 2) == 3"]}
    out["verdicts"] = []
    for code in ("def add(a, b):\\n    return a + b\\n", "def add(a, b):\\n    return a - b\\n"):
        raw = sandbox.run_sandboxed(code, mode="function", tests=tests, isolation=sys.argv[3])
        out["verdicts"].append(raw.reported and raw.exitcode == 0)
print(json.dumps(out))
"""


def test_a_python_installed_under_tmp_runs_the_strong_mode(namespaces, tmp_path):
    """A venv under /tmp (common on CI runners and containers): namespaces run, the installation is shown at
    its own path, read-only, above the program's private /tmp; nothing falls back to the guard. The
    reference: under the guard the program, as the evaluating user, writes into that installation."""
    venv = Path(tempfile.mkdtemp(prefix="wmtp-venv-", dir="/tmp"))
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
        )
        program = (
            "import os, sys\nprint(sys.prefix, sorted(os.listdir('/tmp')))\n"
            "try:\n    open(os.path.join(sys.prefix, 'pwned.txt'), 'w').write('x')\n    print('written')\n"
            "except OSError as exc:\n    print(exc.errno)\n"
        )
        seen = {}
        for isolation in ("namespaces", "guard"):
            proc = subprocess.run(
                [str(venv / "bin" / "python"), "-c", VENV_SCRIPT, sandbox_module.__file__, program, isolation],
                capture_output=True, text=True, timeout=120, cwd=tmp_path,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            seen[isolation] = json.loads(proc.stdout)
            if isolation == "namespaces":
                assert not (venv / "pwned.txt").exists()
        inside = seen["namespaces"]
        assert inside["prefix"] == str(venv) and inside["reason"] == "" and inside["error"] == "", inside
        lines = inside["stdout"].split("\n")
        assert lines[0] == f"{venv} {sorted([venv.name, 'work'])}" and lines[1] in ("13", "30")  # read-only
        assert inside["verdicts"] == [True, False]
        assert seen["guard"]["verdicts"] == [True, False]
        if os.geteuid() == 0:
            assert seen["guard"]["stdout"].split("\n")[1] == "written" and (venv / "pwned.txt").exists()
    finally:
        shutil.rmtree(venv)


SYSCALL_NUMBERS = {  # (x86_64, aarch64), from the kernel's syscall tables
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "ptrace": (101, 117),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "keyctl": (250, 219),
    "io_uring_setup": (425, 425),
    "kcmp": (312, 272),
    "process_vm_readv": (310, 270),
    "personality": (135, 92),
}


def test_the_seccomp_filter_denies_what_container_runtimes_deny(namespaces):
    """Each syscall of the filter's list answers EPERM to the program (whatever the kernel would have said
    without the filter), and a syscall made through the x32 ABI kills the program (libseccomp's check of
    the architecture). The reference: under the guard a new user namespace and the keyrings are reachable."""
    machine = os.uname().machine
    if machine not in ("x86_64", "aarch64"):
        pytest.skip(f"syscall numbers listed for x86_64 and aarch64 only, not {machine}")
    column = 0 if machine == "x86_64" else 1
    calls = {
        "bpf": "0, 0, 0",
        "perf_event_open": "0, 0, -1, -1, 0",
        "userfaultfd": "0",
        "ptrace": "0, 0, 0, 0",  # PTRACE_TRACEME
        "unshare": "0x10000000",  # CLONE_NEWUSER
        "setns": "0, 0x10000000",
        "mount": "None, b'/', None, 0x1020, None",  # MS_REMOUNT | MS_BIND
        "keyctl": "0, -3, 0",  # KEYCTL_GET_KEYRING_ID of the session keyring
        "io_uring_setup": "1, None",
        "kcmp": "1, 1, 0, 0, 0",
        "process_vm_readv": "1, None, 0, None, 0, 0",
        "personality": "0xffffffff",  # only asks
    }
    code = LIBC + "".join(
        f"r = libc.syscall({SYSCALL_NUMBERS[name][column]}, {args})\n"
        f"print({name!r}, r if r >= 0 else -ctypes.get_errno(), flush=True)\n"
        for name, args in calls.items()
    )
    clone_newuser = LIBC + "print(libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0), ctypes.get_errno())\n"
    raw = run_sandboxed(code, mode="script", isolation="namespaces")
    assert raw.exitcode == 0, raw
    seen = dict(line.split() for line in raw.stdout.decode().splitlines())
    assert seen == {name: "-1" for name in calls}, seen  # -EPERM each
    if machine == "x86_64":
        cloned = run_sandboxed(clone_newuser, mode="script", isolation="namespaces")
        assert cloned.stdout.decode().split() == ["-1", "1"], cloned  # clone(CLONE_NEWUSER): EPERM
        x32 = run_sandboxed(LIBC + "libc.syscall(0x40000000 | 39)\nprint('alive')\n", mode="script")
        assert x32.signal == signal.SIGSYS and x32.stdout == b"", x32  # getpid through the x32 ABI
    # the reference, with the two harmless calls only (the guard runs as the evaluating user, maybe root)
    harmless = LIBC + "".join(
        f"r = libc.syscall({SYSCALL_NUMBERS[name][column]}, {calls[name]})\n"
        f"print({name!r}, r if r >= 0 else -ctypes.get_errno(), flush=True)\n"
        for name in ("keyctl", "unshare")
    )
    guarded = run_sandboxed(harmless, mode="script", isolation="guard")
    seen = dict(line.split() for line in guarded.stdout.decode().splitlines())
    assert int(seen["unshare"]) == 0 and int(seen["keyctl"]) > 0, seen
