"""Turn (tests JSON, code) pairs into sandboxed runs and decide pass/fail; `check_solutions` is the public API.

`tests` kinds (the data/evaluation contract):
  - {"kind": "humaneval", "test": "<defines check(candidate)>", "entry_point": "<fn>"}
  - {"kind": "asserts", "setup": "<code>", "asserts": ["assert ...", ...]}
  - {"kind": "stdio", "inputs": [...], "outputs": [...]}
A program passes ONLY when the harness positively reports success: for function kinds the per-run nonce
arrived on the report channel after all tests ran; for stdio every test's stdout matched (trailing
whitespace ignored) with exit code 0. No tests at all is "no_tests", never a pass.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataError
from .sandbox import RawRun, SandboxLimits, resolve_isolation, run_sandboxed

STATUSES = ("passed", "failed", "timeout", "error", "no_tests")
DEFAULT_LIMITS = SandboxLimits()


@dataclass
class ExecutionResult:
    """Outcome of one program. `passed` is True only on a positive report from the harness."""

    passed: bool
    status: str  # one of STATUSES
    detail: str  # short human-readable reason
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "status": self.status,
            "detail": self.detail,
            "elapsed_s": self.elapsed_s,
        }


def parse_tests(tests: str, where: str = "tests") -> dict[str, Any]:
    """Parse and validate a tests JSON string; raise ValueError naming `where` and the bad key."""
    try:
        spec = json.loads(tests)
    except (TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: expected a JSON object string, got invalid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(spec).__name__}")
    kind = spec.get("kind")
    required = {
        "humaneval": {"test": str, "entry_point": str},
        "asserts": {"asserts": list},
        "stdio": {"inputs": list, "outputs": list},
    }
    if kind not in required:
        raise DataError(f"{where}: key 'kind': expected one of {sorted(required)}, got {kind!r}")
    for key, typ in required[kind].items():
        if not isinstance(spec.get(key), typ):
            raise DataError(f"{where}: key '{key}': expected {typ.__name__} for kind {kind!r}")
    if kind == "stdio" and len(spec["inputs"]) != len(spec["outputs"]):
        raise DataError(f"{where}: 'inputs' and 'outputs' differ in length")
    spec.setdefault("setup", "")
    return spec


def normalize_output(text: str) -> list[str]:
    """Lines with trailing whitespace removed, trailing blank lines dropped (so "1 \\n2\\n\\n" == "1\\n2")."""
    return [line.rstrip() for line in text.rstrip().splitlines()]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _judge_function_run(raw: RawRun, timeout_s: float) -> ExecutionResult:
    t = raw.elapsed_s
    if raw.supervisor_error:
        return ExecutionResult(False, "error", raw.supervisor_error, t)
    if raw.timed_out:
        return ExecutionResult(False, "timeout", f"timed out after {timeout_s:g} s", t)
    if raw.leftover:
        return ExecutionResult(False, "error", f"left {raw.leftover} background process(es) running", t)
    if raw.reported and not raw.report and raw.exitcode == 0:
        return ExecutionResult(True, "passed", "all tests passed", t)
    first = raw.report.splitlines()[0] if raw.report else ""
    if first.startswith("FAIL "):
        return ExecutionResult(False, "failed", first[5:], t)
    if first.startswith("ERROR "):
        return ExecutionResult(False, "error", first[6:], t)
    if raw.signal is not None:
        return ExecutionResult(False, "error", f"killed by {_signal_name(raw.signal)}", t)
    return ExecutionResult(
        False, "error", f"exited with code {raw.exitcode} before the harness reported success", t
    )


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else ""


def _run_stdio(code: str, spec: dict[str, Any], limits: SandboxLimits, isolation: str) -> ExecutionResult:
    if not spec["inputs"]:
        return ExecutionResult(False, "no_tests", "no stdin/stdout tests available")
    total = 0.0
    for i, (given, expected) in enumerate(zip(spec["inputs"], spec["outputs"], strict=True)):
        raw = run_sandboxed(code, mode="script", stdin=given, limits=limits, isolation=isolation)
        total += raw.elapsed_s
        if raw.supervisor_error:
            return ExecutionResult(False, "error", f"test {i}: {raw.supervisor_error}", total)
        if raw.timed_out:
            return ExecutionResult(
                False, "timeout", f"test {i}: timed out after {limits.timeout_s:g} s", total
            )
        if raw.leftover:
            return ExecutionResult(
                False, "error", f"test {i}: left {raw.leftover} background process(es)", total
            )
        if raw.signal is not None:
            return ExecutionResult(False, "error", f"test {i}: killed by {_signal_name(raw.signal)}", total)
        if raw.exitcode != 0:
            why = _last_line(raw.stderr) or "no message"
            return ExecutionResult(False, "error", f"test {i}: exit code {raw.exitcode}: {why}", total)
        if normalize_output(raw.stdout.decode(errors="replace")) != normalize_output(expected):
            return ExecutionResult(False, "failed", f"test {i}: wrong output", total)
    return ExecutionResult(True, "passed", f"all {len(spec['inputs'])} tests passed", total)


def run_one(
    tests: str | dict[str, Any],
    code: str,
    limits: SandboxLimits = DEFAULT_LIMITS,
    isolation: str = "namespaces",
    prompt: str = "",
) -> ExecutionResult:
    """Run one program against its tests (JSON string or parsed dict) in the sandbox. `prompt`: for HumanEval,
    the trusted prompt (the code before the entry point), whose helper functions the tests' process defines
    itself; the program (which starts with the prompt) cannot replace them."""
    spec = parse_tests(tests) if isinstance(tests, str) else tests
    if spec["kind"] == "humaneval":
        spec = {**spec, "prompt": prompt}
    if spec["kind"] == "stdio":
        return _run_stdio(code, spec, limits, isolation)
    if spec["kind"] == "asserts" and not spec["asserts"]:
        return ExecutionResult(False, "no_tests", "no asserts to run")
    raw = run_sandboxed(code, mode="function", tests=spec, limits=limits, isolation=isolation)
    return _judge_function_run(raw, limits.timeout_s)


def check_solutions(
    tests: Sequence[str],
    codes: Sequence[str],
    *,
    timeout_s: float = 10.0,
    workers: int | None = None,
    memory_mb: int = SandboxLimits.memory_mb,
    progress: bool = False,
    isolation: str = "namespaces",
    prompts: Sequence[str] | None = None,
) -> list[ExecutionResult]:
    """Run every code against its tests (same index) in the sandbox with a pool of `workers` threads
    (default: CPU count), each driving one sandboxed process at a time. Results keep the input order.
    `isolation`: "namespaces" (the default; ValueError, before anything runs, where unavailable) or "guard"
    (the weaker mode, only when asked for); see `wmtp_hf.execution.sandbox.resolve_isolation`. `prompts`
    (same index; HumanEval): the trusted prompt each code starts with, whose helpers the tests use."""
    if len(tests) != len(codes) or (prompts is not None and len(prompts) != len(codes)):
        raise ValueError(
            f"tests, codes and prompts: expected equal lengths, got {len(tests)}, {len(codes)} and "
            f"{len(prompts) if prompts is not None else 'none'}"
        )
    specs = [parse_tests(t, f"tests[{i}]") for i, t in enumerate(tests)]
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)
    mode = resolve_isolation(isolation, "isolation")
    workers = max(1, workers or os.cpu_count() or 1)
    prompts = prompts if prompts is not None else [""] * len(codes)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(run_one, spec, code, limits, mode, prompt)
            for spec, code, prompt in zip(specs, codes, prompts, strict=True)
        ]
        bar = tqdm(total=len(futures), desc="execute", unit="prog", disable=not progress)
        results = []
        for future in futures:
            results.append(future.result())
            bar.update(1)
        bar.close()
    return results
