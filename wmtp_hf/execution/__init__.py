"""Running untrusted programs against tests (docs/design.md §7): the sandbox (one process per program,
limits, Linux namespaces where available) and the harness that checks solutions with it.

Used by evaluation (pass@k) and by the offline data set (its incorrect rows are mutants verified to fail
their tests), so it sits below both and imports neither.
"""

from .harness import ExecutionResult, check_solutions, parse_tests
from .sandbox import SandboxLimits

__all__ = ["ExecutionResult", "SandboxLimits", "check_solutions", "parse_tests"]
