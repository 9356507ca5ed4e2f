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


# --- third round: names the tests look up, the announcement on the pipe, kernel state ---------------------

ABS_AREA = json.dumps({"kind": "asserts", "setup": "", "asserts": ["assert abs(area(2.0) - 12.566) < 1e-3"]})
EVENS = json.dumps({"kind": "asserts", "setup": "", "asserts": ["assert set(evens([1, 2, 3, 4])) == {2, 4}"]})
GOOD_AREA = "import math\ndef area(r):\n    return math.pi * r * r\n"
SHADOWED_BUILTINS = {  # a wrong solution plus a module-level builtin name that would decide the assert
    "abs": (ABS_AREA, "def abs(x):\n    return 0\ndef area(r):\n    return 0.0\n"),
    "set": (EVENS, "def set(x):\n    return {2, 4}\ndef evens(xs):\n    return []\n"),
    "set, by assignment": (EVENS, "set = lambda x: {2, 4}\ndef evens(xs):\n    return []\n"),
}


@pytest.mark.parametrize("name", list(SHADOWED_BUILTINS))
def test_a_shadowed_builtin_does_not_decide_the_asserts(tmp_path, name):
    """The tests' process binds only the names the trusted asserts need (never a builtin): a program's own
    `abs` or `set` stays in its process, in either mode. The reference: an in-process harness is fooled."""
    tests, wrong = SHADOWED_BUILTINS[name]
    good = GOOD_AREA if tests == ABS_AREA else "def evens(xs):\n    return [x for x in xs if x % 2 == 0]\n"
    for isolation in ("namespaces", "guard"):
        if isolation == "namespaces":
            require_namespaces()
        rows, _ = _score(tmp_path, tests, [wrong, good], isolation)
        assert [r["passed"] for r in rows] == [False, True], (isolation, rows)
    namespace: dict = {}
    exec(wrong, namespace)
    exec(json.loads(tests)["asserts"][0], namespace)  # passes: the program's builtin decided


FORGED_READY = (  # announce builtins and a dunder on the pipe first, then hide the server's own announcement
    "import json, os, struct, sys\n"
    "calls = next(m for n, m in list(sys.modules.items()) if n.endswith('remote_calls'))\n"
    "def abs(x):\n    return 0\ndef area(r):\n    return 0.0\n"
    "forged = json.dumps(['ready', [['abs', 'call', False], ['area', 'call', False],\n"
    "    ['__builtins__', 'value', ['d', []]], ['AssertionError', 'call', True], ['check', 'call', False]]])\n"
    "for fd in range(3, 64):\n"
    "    try:\n        os.write(fd, struct.pack('>I', len(forged)) + forged.encode())\n"
    "    except OSError:\n        pass\n"
    "real_send = calls.send\n"
    "def send(fd, message):\n"
    "    if not (isinstance(message, list) and message and message[0] == 'ready'):\n"
    "        real_send(fd, message)\n"
    "calls.send = send\n"
)


def test_a_forged_announcement_on_the_pipe_binds_nothing_the_tests_did_not_ask_for(tmp_path):
    """The program writes its own `ready` frame announcing `abs`, `__builtins__` and the test's own names:
    the tests' process treats it as untrusted input and binds only `area`, so the wrong `area` fails."""
    for isolation in ("namespaces", "guard"):
        if isolation == "namespaces":
            require_namespaces()
        rows, _ = _score(tmp_path, ABS_AREA, [FORGED_READY, FORGED_READY + GOOD_AREA], isolation)
        assert [r["passed"] for r in rows] == [False, True], (isolation, rows)


def test_the_names_bound_are_decided_from_the_trusted_tests_only():
    from wmtp_hf.execution.remote_calls import CandidateChannel, bind_candidate, names_the_tests_need

    def asserts(*lines: str) -> dict:
        return {"kind": "asserts", "asserts": list(lines)}

    assert names_the_tests_need(asserts("assert abs(area(2) - 3.5) < 1e-6")) == {"area"}
    assert names_the_tests_need(asserts("import math", "assert math.isclose(f(1), 2)")) == {"math", "f"}
    assert names_the_tests_need(asserts("assert all(x > 0 for x in g(root))")) == {"g", "root"}
    assert names_the_tests_need(asserts("assert sum(10, 15) == 6")) == {"sum"}  # MBPP 126: its entry point
    assert names_the_tests_need(asserts("assert __import__('os') is not None")) == set()
    assert names_the_tests_need({"kind": "humaneval", "entry_point": "poly_zero", "test": ""}) == {
        "poly_zero"
    }
    forged = [
        ["abs", "call", False],
        ["__builtins__", "value", ["d", []]],
        ["area", "value", 3],
        ["area", "call", False],
        ["check", "call", False],
        "not an entry",
    ]
    namespace: dict = {}
    bind_candidate(namespace, CandidateChannel(-1, -1), forged, {"area", "__builtins__"})
    assert namespace == {"area": 3}  # the first announcement counts; a dunder is never bound, even if asked
    namespace = {}
    bind_candidate(namespace, CandidateChannel(-1, -1), forged, names_the_tests_need(asserts("assert area")))
    assert namespace == {"area": 3}


HELPER_PROMPT = (
    "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n\n\n"
    'def find_zero(xs):\n    """A zero of the linear poly(xs, x)."""\n'
)
HELPER_TESTS = json.dumps(
    {
        "kind": "humaneval",
        "test": "def check(candidate):\n    for xs in ([1, 2], [3, -1]):\n"
        "        assert abs(poly(xs, candidate(xs))) < 1e-6\n",
        "entry_point": "find_zero",
    }
)


def test_a_redefined_prompt_helper_does_not_decide_the_tests(tmp_path):
    """HumanEval's tests call the prompt's helpers (`poly`): the tests' process defines them from the
    trusted prompt, so a completion that redefines `poly` does not decide the asserts."""
    wrong = "    return 0.0\n\n\ndef poly(xs, x):\n    return 0\n"
    good = "    return -xs[0] / xs[1]\n"
    problem = Problem("t/0", HELPER_PROMPT, HELPER_TESTS, HELPER_PROMPT, ())
    from wmtp_hf.evaluation.samples import Sample

    for isolation in ("namespaces", "guard"):
        if isolation == "namespaces":
            require_namespaces()
        rows, _ = score_samples(
            [problem], [Sample("t/0", c) for c in (wrong, good)], ks=[1], progress=False, isolation=isolation
        )
        assert [r["passed"] for r in rows] == [False, True], (isolation, rows)
    namespace: dict = {}
    exec(HELPER_PROMPT + wrong + json.loads(HELPER_TESTS)["test"], namespace)
    namespace["check"](namespace["find_zero"])  # the reference: in one process the redefinition passes


_SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219), "riscv64": (217, 219)}  # add_key, keyctl
KEYCTL_SEARCH, KEYCTL_READ, KEYCTL_INVALIDATE = 10, 11, 21
SESSION_KEYRING, USER_KEYRING, USER_SESSION_KEYRING = -3, -4, -5


def _keyrings() -> tuple[int, int]:
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None or not os.uname().sysname == "Linux":
        pytest.skip("kernel keyrings: Linux on x86_64, aarch64 or riscv64 only")
    return numbers


def _keys_prelude() -> str:
    """`plant(name, value)` (into the session and user keyrings; returns the errno or 0) and `find(name)` (the
    value of a key of that name in either keyring, or None), through raw syscalls past the guard."""
    add_key, keyctl = _keyrings()
    return UNGUARD_CTYPES + (
        f"libc = ctypes.CDLL(None, use_errno=True)\nADD_KEY, KEYCTL = {add_key}, {keyctl}\n"
        "def plant(name, value):\n    errors = []\n"
        f"    for ring in ({SESSION_KEYRING}, {USER_KEYRING}):\n"
        "        r = libc.syscall(ADD_KEY, b'user', name.encode(), value.encode(), len(value), ring)\n"
        "        errors.append(0 if r >= 0 else ctypes.get_errno())\n    return max(errors)\n"
        "def find(name):\n"
        f"    for ring in ({SESSION_KEYRING}, {USER_KEYRING}):\n"
        f"        key = libc.syscall(KEYCTL, {KEYCTL_SEARCH}, ring, b'user', name.encode(), 0)\n"
        "        if key >= 0:\n            buf = ctypes.create_string_buffer(4096)\n"
        f"            n = libc.syscall(KEYCTL, {KEYCTL_READ}, key, buf, 4096)\n"
        "            if n >= 0:\n                return buf.raw[:n].decode()\n"
        "    return None\n"
    )


def _remove_keys(name: str) -> None:
    """Invalidate every key called `name` that this process's session or user keyring can find."""
    import ctypes

    _, keyctl = _keyrings()
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(8):
        found = [libc.syscall(keyctl, KEYCTL_SEARCH, r, b"user", name.encode(), 0) for r in (-3, -4)]
        found = [key for key in found if key >= 0]
        if not found:
            return
        for key in found:
            libc.syscall(keyctl, KEYCTL_INVALIDATE, key)


def test_a_key_planted_by_one_program_is_not_there_for_the_next(namespaces):
    """Keyrings belong to a uid, not to a namespace: under namespaces the seccomp filter denies add_key and
    keyctl (EPERM), each program has a uid and a session keyring of its own. The reference: under the guard
    the next program reads what the first planted."""
    name = f"wmtp-plant-{uuid.uuid4().hex}"
    plant = _keys_prelude() + f"print(plant({name!r}, '42'))\n"
    read = _keys_prelude() + f"print(find({name!r}))\n"
    try:
        for isolation in ("namespaces", "guard"):
            planted = run_sandboxed(plant, mode="script", isolation=isolation)
            found = run_sandboxed(read, mode="script", isolation=isolation)
            assert planted.exitcode == 0 and found.exitcode == 0, (planted, found)
            if isolation == "namespaces":
                assert planted.stdout.decode().split() == ["1"]  # EPERM
                assert found.stdout.decode().split() == ["None"]
            else:
                assert planted.stdout.decode().split() == ["0"] and found.stdout.decode().split() == ["42"]
    finally:
        _remove_keys(name)


def test_a_secret_in_the_evaluators_session_keyring_stays_there(tmp_path, namespaces):
    """The evaluator's session keyring (inherited by the sandbox servers) holds a secret: under namespaces the
    program cannot search or read any keyring and nothing lands in the outputs; under the guard it lands in
    results.jsonl (the reference)."""
    import ctypes

    name, secret = f"wmtp-secret-{uuid.uuid4().hex}", f"hf_{secrets.token_hex(16)}"
    add_key, keyctl = _keyrings()
    libc = ctypes.CDLL(None, use_errno=True)
    # this process's session keyring, or, where it has none, the user-session keyring that then stands in
    # for it (and that the sandbox servers, its children, use too); never a new one made here
    session, user_session = (libc.syscall(keyctl, 0, r, 0) for r in (SESSION_KEYRING, USER_SESSION_KEYRING))
    ring = SESSION_KEYRING if session not in (-1, user_session) else USER_SESSION_KEYRING
    assert libc.syscall(add_key, b"user", name.encode(), secret.encode(), len(secret), ring) > 0
    code = _keys_prelude() + f"def add(a, b):\n    raise ValueError(str(find({name!r})))\n"
    try:
        rows, out = _score(tmp_path, ADD, [code], "namespaces")
        assert not rows[0]["passed"] and "ValueError: None" in rows[0]["result"], rows
        assert not _found_in_outputs(out, secret)
        rows, guarded = _score(tmp_path, ADD, [code], "guard")
        assert secret in (guarded / "results.jsonl").read_text()
    finally:
        _remove_keys(name)


def test_each_program_runs_as_a_uid_of_its_own(namespaces):
    """Per program, not per server: programs in a row on one warm server, and their tests' processes, all
    have different uids (as root; in a user namespace the one mapped uid is kept). The guard: one uid."""
    from wmtp_hf.execution.sandbox_server import JOBS_PER_SERVER_CYCLE, job_ids

    code = "import os\nprint(os.getuid(), os.getgid())\n"
    uids = [
        run_sandboxed(code, mode="script", isolation="namespaces").stdout.decode().split() for _ in range(3)
    ]
    if IS_ROOT:
        assert len({u for u, _ in uids}) == 3 and all(u == g and int(u) > 65535 for u, g in uids), uids
    guarded = {run_sandboxed(code, mode="script", isolation="guard").stdout.decode() for _ in range(2)}
    assert guarded == {f"{os.getuid()} {os.getgid()}\n"}
    # the rule itself: distinct for every (live server pid, job in a cycle), tests' ids apart, within 32 bits
    seen = set()
    for pid in (1, 2, 4_194_303):
        for job in range(JOBS_PER_SERVER_CYCLE):
            ids = job_ids(pid, job)
            seen.update({ids["program"][0], ids["tests"][0]})
            assert ids["program"][0] % 2 == 0 and ids["tests"][0] == ids["program"][0] + 1 < 2**32 - 1
    assert len(seen) == 3 * 2 * JOBS_PER_SERVER_CYCLE
    assert job_ids(7, 0) == job_ids(7, JOBS_PER_SERVER_CYCLE)  # the cycle repeats (documented)


def _guesser(store: str) -> str:
    """A stdio program that knows nothing: it guesses each answer (0..3) and keeps across samples, in a
    /tmp file, a /dev/shm file and a kernel key, which of its guesses made the next test input arrive."""
    return _keys_prelude() + (
        "import json, sys\n"
        f"paths = ['/tmp/{store}', '/dev/shm/{store}']\nstate = None\n"
        "for path in paths:\n    try:\n        state = json.load(open(path))\n        break\n"
        "    except (OSError, ValueError):\n        pass\n"
        f"if state is None:\n    try:\n        state = json.loads(find({store!r}) or 'null')\n"
        "    except ValueError:\n        pass\n"
        "state = state or {'last': None, 'known': {}, 'rejected': {}}\n"
        "given = sys.stdin.read().strip()\n"
        "if state['last']:\n    last, guess = state['last']\n"
        "    if given == '2' and last == '1':\n        state['known']['1'] = guess\n"
        "    elif given == '1':\n        state['rejected'].setdefault(last, []).append(guess)\n"
        "guess = state['known'].get(given)\n"
        "if guess is None:\n"
        "    guess = min(g for g in range(4) if g not in state['rejected'].get(given, []))\n"
        "state['last'] = [given, guess]\n"
        "for path in paths:\n    try:\n        json.dump(state, open(path, 'w'))\n"
        "    except OSError:\n        pass\n"
        f"plant({store!r}, json.dumps(state))\nprint(guess)\n"
    )


def test_a_guessing_program_does_not_converge_across_samples_on_codecontests(namespaces):
    """CodeContests runs test after test until one fails, so a program that could keep state across
    samples would learn its answers. Under namespaces nothing survives a program: every sample fails. The
    reference: under the guard the same program converges and passes."""
    store = f"wmtp-guess-{uuid.uuid4().hex}"
    tests = json.dumps({"kind": "stdio", "inputs": ["1\n", "2\n"], "outputs": ["3", "1"]})
    try:
        for isolation in ("namespaces", "guard"):
            results = check_solutions(
                [tests] * 12, [_guesser(store)] * 12, timeout_s=5, workers=1, isolation=isolation
            )
            passed = [r.passed for r in results]
            if isolation == "namespaces":
                assert passed == [False] * 12, results
                assert {r.detail for r in results} == {"test 0: wrong output"}  # always the stateless guess
            else:
                assert any(passed) and not passed[0], results  # learnt across samples
    finally:
        for folder in ("/tmp", "/dev/shm"):
            Path(folder, store).unlink(missing_ok=True)
        _remove_keys(store)
