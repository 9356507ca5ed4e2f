"""Code out of a model's answer: the first fenced block, and a whole-function answer's definitions."""

from __future__ import annotations

import ast
import re

FENCE = "```"
# An opening fence with an optional language tag, then the code up to the closing fence (or the end).
_BLOCK = re.compile(r"```[ \t]*[\w+.#-]*[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_KEPT = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
)


# The first fenced block, closed: where generation in a fenced format can stop (nothing after it is used).
_CLOSED_BLOCK = re.compile(r"```[ \t]*[\w+.#-]*[ \t]*\n.*?\n[ \t]*```", re.DOTALL)


def closed_block_end(text: str) -> int | None:
    """The index just after the closing fence of `text`'s first fenced block (None while it is open or
    there is none): `extract_code` reads nothing after it, so a generation may stop there."""
    match = _CLOSED_BLOCK.search(text)
    return None if match is None else match.end()


def has_fence(text: str) -> bool:
    return FENCE in text


def extract_code(text: str) -> str:
    """The code of the first fenced block (an unclosed one runs to the end: the answer was cut off), else
    the whole text."""
    match = _BLOCK.search(text)
    if match is None:
        return text
    code = match.group(1)
    return code if code.endswith("\n") else code + "\n"


def keep_definitions(code: str) -> str:
    """`code`'s top-level imports, assignments, functions and classes, in order (example calls, prints,
    asserts and `if __name__ == "__main__":` blocks dropped, as evaluation harnesses sanitise answers), so
    the model's own demo code cannot fail or hang a correct function. Code that does not parse (e.g. a body
    alone) is returned as it is."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    lines = code.splitlines(keepends=True)
    kept = []
    for node in tree.body:
        if isinstance(node, _KEPT):
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            kept.append("".join(lines[first - 1 : node.end_lineno]))
    return "".join(part if part.endswith("\n") else part + "\n" for part in kept)
