"""HumanEval results must be built-in values: an object whose `==` always answers True must not pass.

Standard library only: `sandbox_server.py` loads this file by path and calls `make_result_guard` before the
candidate runs. The guard keeps its own references to `type`, `id`, the built-in types and their methods
(closure variables, not globals), so a candidate that replaces builtins or this module's names afterwards
does not change what it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SCALARS = (bool, int, float, complex, str, bytes, type(None))
CONTAINERS = (list, tuple, dict, set, frozenset)


class NonBuiltinResult(AssertionError):
    """The function under test returned something that is not made of built-in types."""


def make_result_guard() -> tuple[Callable[[Callable], Callable], Callable[[], str]]:
    """Return (wrap, first_rejection).

    `wrap(fn)` calls `fn` and returns a fresh copy of its result made of built-in types only — numbers, str,
    bytes, None, and lists/tuples/dicts/sets/frozensets of them, checked by exact type so that no subclass
    can redefine `==` — or raises NonBuiltinResult. Returning a copy means nothing the candidate still holds
    (another thread, say) can change the value the tests compare. `first_rejection()` stays "" until a call
    was rejected, so a test that catches the exception still fails.
    """
    exact_type, ident, count = type, id, enumerate
    scalars, containers = frozenset(SCALARS), frozenset(CONTAINERS)
    new_tuple, new_set, new_frozenset = tuple, set, frozenset
    dict_items, append, add, discard = dict.items, list.append, set.add, set.discard
    error = NonBuiltinResult
    rejected: list[str] = []

    def reject(obj: Any, where: str, why: str) -> None:
        append(rejected, where)  # recorded before anything of `obj` runs (its type's name, say)
        rejected[-1] = f"{where}: {why}"
        raise error(rejected[-1])

    def copy(obj: Any, where: str, active: set[int]) -> Any:
        kind = exact_type(obj)
        if kind in scalars:
            return obj
        if kind not in containers:
            reject(obj, where, f"a {kind.__name__}, not a built-in value")
        key = ident(obj)
        if key in active:
            reject(obj, where, "contains itself")
        add(active, key)
        try:
            if kind is dict:
                return {
                    copy(k, f"{where} key {i}", active): copy(v, f"{where}[key {i}]", active)
                    for i, (k, v) in count(dict_items(obj))
                }
            elements = [copy(e, f"{where}[{i}]", active) for i, e in count(obj)]
            if kind is list:
                return elements
            return (
                new_tuple(elements)
                if kind is tuple
                else (new_set if kind is set else new_frozenset)(elements)
            )
        finally:
            discard(active, key)

    def wrap(fn: Callable) -> Callable:
        def checked(*args: Any, **kwargs: Any) -> Any:
            return copy(fn(*args, **kwargs), "result", new_set())

        return checked

    def first_rejection() -> str:
        return rejected[0] if rejected else ""

    return wrap, first_rejection
