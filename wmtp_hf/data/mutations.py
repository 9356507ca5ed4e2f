"""Small semantic mutations of a HumanEval function body, for the offline default's incorrect examples.

Each mutation edits the source text of one AST node in place (the rest of the body keeps its exact
formatting), and is accepted only if the edited text parses to exactly the intended AST. Whether a
mutant is really wrong is decided later by running the problem's tests (see `offline.py`).
"""

from __future__ import annotations

import ast
import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass

# Bodies are indented function bodies; wrapping them in a def makes them parseable on their own.
WRAPPER = "def __wmtp_body__():\n"

FLIPPED_COMPARISON: dict[type, type] = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
OTHER_ARITHMETIC: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Div,
    ast.Div: ast.FloorDiv,
    ast.Mod: ast.FloorDiv,
}
ORDERED_COMPARISON = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift)
KINDS = (
    "flip_comparison",
    "off_by_one",
    "swap_operands",
    "arithmetic_operator",
    "boolean_operator",
    "negate_condition",
    "drop_statement",
    "change_return",
)


@dataclass(frozen=True)
class Mutant:
    """A mutated body (`code` replaces the canonical solution) and the kind of mutation applied."""

    kind: str
    code: str


@dataclass(frozen=True)
class _Site:
    kind: str
    index: int  # position of the target node in ast.walk order (stable across deepcopy)
    new: ast.AST | None  # replacement node; None deletes a statement


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _sites(tree: ast.AST) -> Iterator[_Site]:
    """Every applicable mutation, in a deterministic order."""
    inside_fstring = {id(n) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for n in ast.walk(j)}
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in inside_fstring:
            continue
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in FLIPPED_COMPARISON:
                    new = copy.deepcopy(node)
                    new.ops[k] = FLIPPED_COMPARISON[type(op)]()
                    yield _Site("flip_comparison", index, new)
            if len(node.ops) == 1 and type(node.ops[0]) in ORDERED_COMPARISON:
                yield _Site(
                    "swap_operands",
                    index,
                    ast.Compare(node.comparators[0], node.ops, [copy.deepcopy(node.left)]),
                )
        elif _is_int(node):
            yield _Site("off_by_one", index, ast.Constant(node.value + 1))
            if node.value > 0:
                yield _Site("off_by_one", index, ast.Constant(node.value - 1))
        elif isinstance(node, ast.BinOp):
            if type(node.op) in NON_COMMUTATIVE:
                yield _Site("swap_operands", index, ast.BinOp(node.right, node.op, node.left))
            if type(node.op) in OTHER_ARITHMETIC:
                yield _Site(
                    "arithmetic_operator",
                    index,
                    ast.BinOp(node.left, OTHER_ARITHMETIC[type(node.op)](), node.right),
                )
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            yield _Site("boolean_operator", index, ast.BoolOp(other, node.values))
        elif isinstance(node, ast.Return) and node.value is not None:
            yield _Site("change_return", index, _changed_return(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.While | ast.IfExp) and id(node.test) not in inside_fstring:
            test = node.test
            negated = test.operand if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) else None
            yield _Site("negate_condition", _index_of(tree, test), negated or ast.UnaryOp(ast.Not(), test))
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and len(block) >= 2 and node is not tree:
                for stmt in block:
                    yield _Site("drop_statement", _index_of(tree, stmt), None)


def _changed_return(node: ast.Return) -> ast.Return:
    """`return True` ↔ `return False`, `return n` → `return n + 1`, anything else → `return None`."""
    value = node.value
    if isinstance(value, ast.Constant) and isinstance(value.value, bool):
        return ast.Return(ast.Constant(not value.value))
    if _is_int(value):
        return ast.Return(ast.Constant(value.value + 1))
    return ast.Return(ast.Constant(None))


def _index_of(tree: ast.AST, target: ast.AST) -> int:
    return next(i for i, n in enumerate(ast.walk(tree)) if n is target)


def _replaced(tree: ast.AST, index: int, new: ast.AST | None) -> ast.AST:
    """Deep copy of `tree` with node number `index` replaced by `new` (or removed from its block)."""
    tree = copy.deepcopy(tree)
    target = next(n for i, n in enumerate(ast.walk(tree)) if i == index)
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is target:
                setattr(parent, field, new)
                return tree
            if isinstance(value, list) and any(v is target for v in value):
                setattr(
                    parent,
                    field,
                    [new if v is target else v for v in value if new is not None or v is not target],
                )
                return tree
    raise AssertionError("mutation target not found")


def _line_starts(data: bytes) -> list[int]:
    starts = [0]
    for i, byte in enumerate(data):
        if byte == 0x0A:
            starts.append(i + 1)
    return starts


def _edit(source: str, tree: ast.AST, site: _Site) -> str | None:
    """Apply `site` to the text; None when the edit cannot be expressed cleanly."""
    data = source.encode("utf-8")
    starts = _line_starts(data)
    target = next(n for i, n in enumerate(ast.walk(tree)) if i == site.index)
    if site.kind == "change_return":  # edit the returned expression only
        target, site_new = target.value, site.new.value  # type: ignore[union-attr]
    else:
        site_new = site.new
    begin = starts[target.lineno - 1] + target.col_offset
    end = starts[target.end_lineno - 1] + target.end_col_offset
    if site_new is None:  # drop whole lines only: the statement must be alone on them
        line_begin = starts[target.lineno - 1]
        line_end = starts[target.end_lineno] if target.end_lineno < len(starts) else len(data)
        if data[line_begin:begin].strip() or data[end:line_end].strip():
            return None
        return (data[:line_begin] + data[line_end:]).decode("utf-8")
    text = ast.unparse(site_new).encode("utf-8")
    return (data[:begin] + text + data[end:]).decode("utf-8")


def _valid(source: str | None, expected: ast.AST) -> bool:
    if source is None:
        return False
    try:
        parsed = ast.parse(source)
    except SyntaxError:
        return False
    return ast.dump(parsed) == ast.dump(expected)


def mutate(body: str, rng: random.Random, limit: int) -> list[Mutant]:
    """Up to `limit` distinct syntactically valid mutants of `body`, cycling over mutation kinds.

    Deterministic for a given `rng` state. Mutants are not yet known to be wrong: the caller runs tests.
    """
    source = WRAPPER + body
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    by_kind: dict[str, list[_Site]] = {}
    for site in _sites(tree):
        by_kind.setdefault(site.kind, []).append(site)
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    for sites in by_kind.values():
        rng.shuffle(sites)
    order = [
        sites[i]
        for i in range(max(map(len, by_kind.values()), default=0))
        for sites in (by_kind[k] for k in kinds)
        if i < len(sites)
    ]
    seen = {body}
    out: list[Mutant] = []
    for site in order:
        edited = _edit(source, tree, site)
        if not _valid(edited, _replaced(tree, site.index, site.new)):
            continue
        code = edited[len(WRAPPER) :]
        if code in seen:
            continue
        seen.add(code)
        out.append(Mutant(site.kind, code))
        if len(out) >= limit:
            break
    return out
