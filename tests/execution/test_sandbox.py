"""Sandbox + harness: correct programs pass, hostile programs are judged failed and leave nothing behind."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from sandbox_fixtures import UNGUARD_CTYPES, exec_sleep, isolation, no_process_left_behind, processes_with

from wmtp_hf.evaluation import ExecutionResult, check_solutions
from wmtp_hf.execution.harness import normalize_output
from wmtp_hf.execution.sandbox import SandboxLimits, run_sandboxed

__all__ = ["isolation", "no_process_left_behind"]  # fixtures: imported to be used by name

ASSERTS = json.dumps(
    {"kind": "asserts", "setup": "", "asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}
)
HUMANEVAL = json.dumps(
    {
        "kind": "humaneval",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    }
)
GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"


def _run(code: str, tests: str = ASSERTS, timeout_s: float = 5.0, **kw) -> ExecutionResult:
    return check_solutions([tests], [code], timeout_s=timeout_s, workers=1, **kw)[0]


def test_correct_and_wrong_programs_are_judged_by_the_tests():
    results = check_solutions(
        [ASSERTS, ASSERTS, HUMANEVAL, HUMANEVAL], [GOOD, WRONG, GOOD, WRONG], timeout_s=5
    )
    assert [r.passed for r in results] == [True, False, True, False]
    assert [r.status for r in results] == ["passed", "failed", "passed", "failed"]
    assert "AssertionError" in results[1].detail


def test_contract_signature_and_order_with_many_workers():
    codes = [GOOD if i % 3 else WRONG for i in range(12)]
    results = check_solutions([ASSERTS] * 12, codes, timeout_s=5, workers=4)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(12)]
    assert all(isinstance(r, ExecutionResult) and r.detail for r in results)


def test_exceptions_and_syntax_errors_are_errors_not_passes():
    assert _run("def add(a, b):\n    return a +\n").status == "error"
    r = _run("def add(a, b):\n    raise ValueError('boom')\n")
    assert (r.passed, r.status) == (False, "error") and "ValueError" in r.detail


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="equal lengths"):
        check_solutions([ASSERTS], [GOOD, GOOD])
    with pytest.raises(ValueError, match=r"tests\[0\]: key 'kind'"):
        check_solutions([json.dumps({"kind": "nope"})], [GOOD])
    with pytest.raises(ValueError, match=r"tests\[0\]: expected a JSON object string"):
        check_solutions(["{not json"], [GOOD])


@pytest.mark.parametrize(
    "prelude",
    [
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "raise SystemExit(0)\n",
        "exit()\n",
    ],
    ids=["os._exit", "sys.exit", "SystemExit", "exit"],
)
def test_exit_zero_before_the_asserts_fails(prelude, isolation):
    for tests in (ASSERTS, HUMANEVAL):
        r = _run(WRONG + prelude, tests, isolation=isolation)
        assert not r.passed and r.status == "error", r


def test_exit_inside_the_function_under_test_fails():
    for body in ("import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"):
        r = _run(f"def add(a, b):\n    {body}\n", HUMANEVAL)
        assert not r.passed, (body, r)


def test_monkeypatched_builtins_do_not_fool_the_tests():
    tests = json.dumps({"kind": "asserts", "setup": "", "asserts": ["assert len(add(1, 2)) == 3"]})
    assert _run("def add(a, b):\n    return [a, b, a + b]\n", tests).passed  # the honest version passes
    hostile = [
        "import builtins\nbuiltins.len = lambda *a: 3\ndef add(a, b):\n    return 0\n",
        "__builtins__.len = lambda *a: 3\ndef add(a, b):\n    return 0\n",
        "import builtins\nbuiltins.AssertionError = KeyboardInterrupt\nbuiltins.print = lambda *a: None\n"
        "def add(a, b):\n    return None\n",
    ]
    for code in hostile:
        r = _run(code, tests)
        assert not r.passed, (code, r)


def test_forged_report_without_the_nonce_fails(isolation):
    code = (
        WRONG
        + "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32 + b'\\npassed\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\n"
    )
    assert not _run(code, isolation=isolation).passed


def test_infinite_loop_times_out(isolation, no_process_left_behind):
    start = time.monotonic()
    r = _run("while True:\n    pass\n", timeout_s=1.0, isolation=isolation)
    assert (r.passed, r.status) == (False, "timeout")
    assert time.monotonic() - start < 6.0


def test_memory_bomb_fails_fast(isolation, no_process_left_behind):
    for code in ("x = bytearray(8 * 1024 ** 3)\n", "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n"):
        r = _run(code + GOOD, timeout_s=10.0, memory_mb=512, isolation=isolation)
        assert not r.passed and r.status == "error" and "MemoryError" in r.detail, r


def test_guarded_fork_bomb_fails(isolation, no_process_left_behind):
    r = _run("import os\nwhile True:\n    os.fork()\n" + GOOD, timeout_s=3.0, isolation=isolation)
    assert not r.passed


def test_bounded_fork_bomb_that_bypasses_the_guard_is_killed(isolation, no_process_left_behind):
    marker = f"{uuid.uuid4().int % 10**6 + 1000}.25"
    code = (
        UNGUARD_CTYPES
        + "libc = ctypes.CDLL(None)\nfor _ in range(5):\n    libc.fork()\n"  # 32 processes
        + exec_sleep(marker)
        + GOOD
    )
    r = _run(code, timeout_s=2.0, isolation=isolation)
    assert not r.passed and r.status in ("timeout", "error"), r  # error: the candidate's process is gone
    assert processes_with(marker) == []


def test_orphaned_background_processes_are_killed_and_judged_failed(isolation, no_process_left_behind):
    marker = f"{uuid.uuid4().int % 10**6 + 1000}.5"
    popen_escape = (
        "import importlib, subprocess, sys\nimportlib.reload(subprocess)\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({marker})'], start_new_session=True)\n"
        + GOOD
    )
    double_fork = (
        UNGUARD_CTYPES + "libc = ctypes.CDLL(None)\n"
        "if libc.fork() == 0:\n    libc.setsid()\n    if libc.fork() == 0:\n"
        + "        "
        + exec_sleep(marker)
        + "    libc._exit(0)\n"
        + GOOD
    )
    for code in (popen_escape, double_fork):
        r = _run(code, timeout_s=5.0, isolation=isolation)
        assert not r.passed and "background process" in r.detail, r
        assert processes_with(marker) == []


def test_deleting_files_outside_the_sandbox_is_blocked(tmp_path, isolation, no_process_left_behind):
    sentinel = tmp_path / "keep" / "sentinel.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("precious")
    attempts = [
        f"import os\nos.remove({str(sentinel)!r})\n",
        f"import os\nos.unlink({str(sentinel)!r})\n",
        f"import pathlib\npathlib.Path({str(sentinel)!r}).unlink()\n",
        f"import shutil\nshutil.rmtree({str(sentinel.parent)!r})\n",
        f"import posix\nposix.unlink({str(sentinel)!r})\n",
        f"import os\nos.rename({str(sentinel)!r}, 'stolen')\n",
        f"import subprocess\nsubprocess.run(['rm', '-rf', {str(sentinel.parent)!r}])\n",
        f"import os\nos.system('rm -rf {sentinel.parent}')\n",
    ]
    results = check_solutions(
        [ASSERTS] * len(attempts), [a + GOOD for a in attempts], timeout_s=5, workers=2, isolation=isolation
    )
    assert all(not r.passed for r in results), results
    assert sentinel.read_text() == "precious"


def test_working_directory_is_temporary_and_stdin_is_empty(isolation):
    name = f"scratch-{uuid.uuid4().hex}.txt"
    code = (
        f"import os, sys\nopen({name!r}, 'w').write('x')\nprint(os.getcwd())\nprint(repr(sys.stdin.read()))\n"
    )
    raw = run_sandboxed(code, mode="script", isolation=isolation)
    cwd, stdin_seen = raw.stdout.decode().splitlines()
    assert raw.exitcode == 0 and stdin_seen == "''"
    assert cwd != os.getcwd() and not (Path(cwd) / name).exists()


def test_file_size_limit_stops_huge_writes(isolation):
    raw = run_sandboxed(
        "open('big', 'wb').write(b'x' * (3 << 20))\n",
        mode="script",
        limits=SandboxLimits(file_size_mb=1),
        isolation=isolation,
    )
    assert raw.exitcode != 0 or raw.signal is not None


def test_stdio_problem_compares_output_tolerating_trailing_whitespace():
    tests = json.dumps({"kind": "stdio", "inputs": ["3\n1 2 3\n", "1\n5\n"], "outputs": ["6\n", "5"]})
    sum_prog = "n = int(input())\nprint(sum(map(int, input().split())), '  ')\nprint()\n"
    threaded = (
        "import sys, threading\ndef main():\n    data = sys.stdin.read().split()\n"
        "    sys.stdout.write(str(sum(map(int, data[1:]))) + '\\n')\n"
        "threading.Thread(target=main).start()\n"
    )
    codes = [sum_prog, threaded, "print(6)\n", "import sys\nsys.exit(0)\n", "raise RuntimeError('x')\n"]
    results = check_solutions([tests] * len(codes), codes, timeout_s=5)
    assert [r.status for r in results] == ["passed", "passed", "failed", "failed", "error"]
    assert check_solutions([json.dumps({"kind": "stdio", "inputs": [], "outputs": []})], [sum_prog])[
        0
    ].status == ("no_tests")


def test_normalize_output_reference_cases():
    assert normalize_output("1 \n2\t\n\n\n") == normalize_output("1\n2")
    assert normalize_output(" 1\n2") != normalize_output("1\n2")  # leading space matters
    assert normalize_output("1\n\n2") != normalize_output("1\n2")  # inner blank lines matter
