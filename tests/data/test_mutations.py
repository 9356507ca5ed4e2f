"""Mutation operators: each kind makes the intended, minimal text edit; results are deterministic."""

from __future__ import annotations

import ast
import random

from wmtp_hf.data.mutations import KINDS, mutate

BODY = """    total = 0
    for x in values:
        if x > limit and x != 3:
            total += x - 1
    return total
"""


def _all(body):
    return mutate(body, random.Random(0), limit=10_000)


def _by_kind(body):
    out = {}
    for m in _all(body):
        out.setdefault(m.kind, set()).add(m.code)
    return out


def _replace(old, new, body=BODY):
    assert body.count(old) == 1
    return body.replace(old, new)


def test_each_kind_makes_the_expected_edits():
    kinds = _by_kind(BODY)
    assert set(kinds) == set(KINDS)
    assert kinds["flip_comparison"] == {_replace("x > limit", "x <= limit"), _replace("x != 3", "x == 3")}
    assert _replace("x > limit", "limit > x") in kinds["swap_operands"]
    assert _replace("x - 1", "1 - x") in kinds["swap_operands"]
    assert kinds["arithmetic_operator"] == {_replace("x - 1", "x + 1")}
    assert kinds["boolean_operator"] == {_replace("x > limit and x != 3", "x > limit or x != 3")}
    assert kinds["negate_condition"] == {_replace("if x > limit and x != 3", "if not (x > limit and x != 3)")}
    assert kinds["off_by_one"] == {
        _replace("total = 0", "total = 1"),
        _replace("x != 3", "x != 4"),
        _replace("x != 3", "x != 2"),
        _replace("x - 1", "x - 2"),
        _replace("x - 1", "x - 0"),
    }
    assert kinds["change_return"] == {_replace("return total", "return None")}
    assert kinds["drop_statement"] == {
        _replace("    total = 0\n", ""),
        "    total = 0\n    return total\n",  # the whole for loop
        _replace("    return total\n", ""),
    }


def test_mutants_parse_differ_and_keep_untouched_lines():
    original = BODY.splitlines()
    for m in _all(BODY):
        ast.parse("def f():\n" + m.code)
        assert m.code != BODY
        changed = [a != b for a, b in zip(original, m.code.splitlines(), strict=False)]
        assert sum(changed) <= 1 or m.kind == "drop_statement"


def test_return_constants_and_unicode_positions():
    body = '    s = "héllo"\n    if s:\n        return True\n    return len(s) + 2\n'
    kinds = _by_kind(body)
    assert body.replace("return True", "return False") in kinds["change_return"]
    assert body.replace("len(s) + 2", "len(s) + 3") in kinds["off_by_one"]  # byte offsets after "é"


def test_deterministic_for_a_seed_and_limited():
    a = mutate(BODY, random.Random("seed"), limit=4)
    b = mutate(BODY, random.Random("seed"), limit=4)
    assert a == b and len(a) == 4
    assert len({m.kind for m in a}) == 4  # cycles over kinds before repeating one
    assert mutate("    return (\n", random.Random(0), limit=3) == []  # unparsable body: no mutants
