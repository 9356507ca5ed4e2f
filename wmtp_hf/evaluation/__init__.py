"""Evaluation: sandboxed execution of generated code and unbiased pass@k (docs/design.md §7)."""

from .harness import ExecutionResult, check_solutions, parse_tests
from .pass_at_k import pass_at_k, summarize_pass_at_k
from .sandbox import SandboxLimits

__all__ = [
    "ExecutionResult",
    "SandboxLimits",
    "check_solutions",
    "parse_tests",
    "pass_at_k",
    "summarize_pass_at_k",
]
