"""The attacks of the sandbox's second round, one class each: patching what the tests use, reading a root-only
file outside, a fork storm, leaving files in /tmp for the next sample. Under namespaces each fails, changes
nothing outside and puts no secret in any output file; where the guard alone lets an attack through, the
test shows that too (it is the reference that the namespace test could fail)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from sandbox_fixtures import UNGUARD_CTYPES, no_process_left_behind, require_namespaces

from wmtp_hf.evaluation import check_solutions
from wmtp_hf.evaluation.problems import Problem
from wmtp_hf.evaluation.runner import score_samples, write_outputs
from wmtp_hf.execution.sandbox import SandboxLimits, run_sandboxed

__all__ = ["no_process_left_behind"]  # a fixture: imported to be used by name

AREA = json.dumps(
    {
        "kind": "asserts",
        "setup": "",
        "asserts": ["import math", "assert math.isclose(area(2.0), 12.566, rel_tol=1e-3)"],
    }
)
ADD = json.dumps(
    {"kind": "asserts", "setup": "", "asserts": ["assert add(1, 2) == 3", "assert add(20, 22) == 42"]}
)
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def namespaces() -> None:
    require_namespaces()


@pytest.fixture
def secret_file():
    """A root-only (0600) file holding a fresh secret, inside this repository (outside any sandbox)."""
    folder = Path(tempfile.mkdtemp(prefix=".secret-", dir=Path(__file__).resolve().parent))
    path = folder / "token.txt"
    value = f"hf_{secrets.token_hex(16)}"
    path.write_text(value)
    path.chmod(0o600)
    yield path, value
    shutil.rmtree(folder)


def _score(tmp_path: Path, tests: str, codes: list[str], isolation: str) -> tuple[list[dict], Path]:
    """Score `codes` as samples of one problem and write results.jsonl + summary.json like the CLI does."""
    problem = Problem("t/0", "", tests, "", ())
    from wmtp_hf.evaluation.samples import Sample

    rows, summary = score_samples(
        [problem], [Sample("t/0", c) for c in codes], ks=[1], timeout_s=5, progress=False, isolation=isolation
    )
    out = tmp_path / isolation
    write_outputs(out, rows, summary)
    return rows, out


def _found_in_outputs(out: Path, text: str) -> bool:
    return any(text in p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())


PATCH_WHAT_THE_TESTS_USE = {
    "a module the tests use": "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 0.0\n",
    "the builtins": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.AssertionError = KeyboardInterrupt\n"
    "def area(r):\n    return 0.0\n",
    "the nonce, by walking frames and objects": "import gc, os, re, sys\ndef area(r):\n"
    "    found = set()\n    frame = sys._getframe()\n    while frame is not None:\n"
    "        found.update(v for v in frame.f_locals.values() if isinstance(v, (str, bytes)))\n"
    "        frame = frame.f_back\n"
    "    found.update(o for o in gc.get_objects() if isinstance(o, dict) for o in o.values() if isinstance(o, str))\n"
    "    for text in found:\n"
    "        text = text.decode(errors='replace') if isinstance(text, bytes) else text\n"
    "        for nonce in re.findall('[0-9a-f]{32}', text):\n"
    "            for fd in range(3, 256):\n"
    "                try:\n                    os.write(fd, (nonce + '\\n').encode())\n"
    "                except OSError:\n                    pass\n"
    "    os._exit(0)\n",
    "a tracer": "import sys\ndef area(r):\n    sys.settrace(lambda *a: None)\n    f = sys._getframe(1)\n"
    "    f.f_trace = lambda *a: None\n    f.f_globals['math'] = type('M', (), {'isclose': staticmethod(lambda *a, **k: True)})\n"
    "    return 0.0\n",
}


@pytest.mark.parametrize("name", list(PATCH_WHAT_THE_TESTS_USE))
def test_patching_what_the_tests_use_fails(tmp_path, name):
    """The tests run in their own process: whatever the candidate patches stays in its own."""
    code = PATCH_WHAT_THE_TESTS_USE[name]
    for isolation in ("namespaces", "guard") if IS_ROOT else ("guard",):
        if isolation == "namespaces":
            require_namespaces()
        rows, _ = _score(
            tmp_path, AREA, [code, "import math\ndef area(r):\n    return math.pi * r * r\n"], isolation
        )
        assert [r["passed"] for r in rows] == [False, True], (isolation, rows)


def test_patching_a_module_the_tests_use_fools_an_in_process_harness():
    """The reference for the test above: candidate and asserts in one namespace, the module patch passes."""
    namespace: dict = {}
    code = PATCH_WHAT_THE_TESTS_USE["a module the tests use"].replace(
        "import math\n", "import fractions as math\n"
    )
    exec(code, namespace)  # `fractions` stands in for `math`, so this process's math stays intact
    exec("assert math.isclose(area(2.0), 12.566, rel_tol=1e-3)", namespace)


READ_THE_TESTS = (  # a lookup, not a solution: read the expected answers from this run's own tests file
    "import json, re\ndef add(a, b):\n    spec = json.load(open('../tests.json'))['tests']\n"
    "    for line in spec['asserts']:\n"
    "        m = re.fullmatch(r'assert add\\((\\d+), (\\d+)\\) == (\\d+)', line)\n"
    "        if m and (int(m[1]), int(m[2])) == (a, b):\n            return int(m[3])\n"
)


def test_reading_the_tests_fails_under_namespaces_and_is_a_gap_of_the_guard(tmp_path, namespaces):
    assert not check_solutions([ADD], [READ_THE_TESTS], timeout_s=5, isolation="namespaces")[0].passed
    guarded = check_solutions([ADD], [READ_THE_TESTS], timeout_s=5, isolation="guard")[0]
    assert guarded.passed  # the guard alone: the program can read its own run's tests (documented gap)


def test_reading_a_root_only_file_outside_fails_and_leaks_nothing(tmp_path, namespaces, secret_file):
    path, secret = secret_file
    code = f"def add(a, b):\n    raise ValueError(open({str(path)!r}).read())\n"
    shown = f"print(open({str(path)!r}).read())\nraise ValueError(open({str(path)!r}).read())\n"
    rows, out = _score(tmp_path, ADD, [code, shown], "namespaces")
    assert [r["passed"] for r in rows] == [False, False]
    assert all("FileNotFoundError" in r["result"] for r in rows), rows
    assert not _found_in_outputs(out, secret)
    assert path.read_text() == secret and oct(path.stat().st_mode & 0o777) == "0o600"
    if IS_ROOT:  # the reference: the guard alone, run as root, reads it, and it lands in results.jsonl
        _, guarded = _score(tmp_path, ADD, [code], "guard")
        assert _found_in_outputs(guarded, secret) and secret in (guarded / "results.jsonl").read_text()


def _fork_storm(attempts: int) -> str:
    """Fork up to `attempts` children (raw libc, past the guard) that wait forever; print how many forked."""
    return (
        UNGUARD_CTYPES + "libc = ctypes.CDLL(None)\nforked = 0\n"
        f"for _ in range({attempts}):\n    pid = libc.fork()\n    if pid == 0:\n        libc.pause()\n"
        "        libc._exit(0)\n    if pid < 0:\n        break\n    forked += 1\n"
        "print(forked, flush=True)\n"
    )


def test_a_fork_storm_is_bounded_judged_failed_and_leaves_nothing(namespaces, no_process_left_behind):
    limits = SandboxLimits(timeout_s=5.0, max_processes=16)
    raw = run_sandboxed(_fork_storm(200), mode="script", limits=limits, isolation="namespaces")
    assert raw.exitcode == 0 and 0 < int(raw.stdout) < 16, raw  # the program itself is one of the 16
    assert raw.leftover == int(raw.stdout)  # all killed by the supervisor
    verdict = check_solutions([ADD], [_fork_storm(200) + "def add(a, b):\n    return a + b\n"], timeout_s=5)[
        0
    ]
    assert not verdict.passed and "background process" in verdict.detail, verdict
    if IS_ROOT:  # the reference: under the guard alone, RLIMIT_NPROC does not bind root
        guarded = run_sandboxed(_fork_storm(40), mode="script", limits=limits, isolation="guard")
        assert int(guarded.stdout) == 40 and guarded.leftover == 40


def test_files_left_in_tmp_are_gone_for_the_next_sample(tmp_path, namespaces):
    name = f"leftover-{uuid.uuid4().hex}"
    leave = f"open('/tmp/{name}', 'w').write('from sample 1')\nopen('/dev/shm/{name}', 'w').write('x')\n"
    look = f"import os\nprint(os.path.exists('/tmp/{name}'), os.path.exists('/dev/shm/{name}'))\n"
    try:
        for isolation, expected in (("namespaces", "False False"), ("guard", "True True")):
            if isolation == "guard" and not os.access("/dev/shm", os.W_OK):
                continue
            assert run_sandboxed(leave, mode="script", isolation=isolation).exitcode == 0
            seen = run_sandboxed(look, mode="script", isolation=isolation).stdout.decode().strip()
            assert seen == expected, isolation  # the guard: the host's /tmp, shared by every sample
            if isolation == "namespaces":
                assert not Path(f"/tmp/{name}").exists() and not Path(f"/dev/shm/{name}").exists()
    finally:
        for folder in ("/tmp", "/dev/shm"):
            Path(folder, name).unlink(missing_ok=True)


def test_the_summary_says_what_the_mode_does_not_protect(tmp_path):
    _, out = _score(tmp_path, ADD, ["def add(a, b):\n    return a + b\n"], "guard")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["isolation"] == "guard"
    gaps = " ".join(summary["isolation_gaps"])
    for words in ("every file", "network", "RLIMIT_NPROC does not bind root", "/tmp"):
        assert words in gaps
