"""Evaluation (docs/design.md §7): generate completions, run them in the sandbox (`wmtp_hf.execution`), unbiased pass@k."""

from ..execution import ExecutionResult, SandboxLimits, check_solutions, parse_tests
from .pass_at_k import pass_at_k, summarize_pass_at_k

__all__ = [
    "ExecutionResult",
    "SandboxLimits",
    "check_solutions",
    "parse_tests",
    "pass_at_k",
    "summarize_pass_at_k",
]
