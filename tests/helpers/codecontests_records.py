"""Raw CodeContests records (the Hub's schema) in several languages, with and without incorrect solutions:
input for the CodeContests source's tests and for stages that read a CodeContests file."""

from __future__ import annotations


def _problem(name, solutions, incorrect=None, difficulty=7, **extra):
    record = {
        "name": name,
        "description": f"Solve {name}.",
        "public_tests": {"input": ["1\n", "2\n", "3\n"], "output": ["2\n", "3\n", "4\n"]},
        "private_tests": {"input": ["5\n"], "output": ["6\n"]},
        "generated_tests": {"input": ["9\n"], "output": ["10\n"]},
        "difficulty": difficulty,
        "solutions": {"language": [s[0] for s in solutions], "solution": [s[1] for s in solutions]},
        **extra,
    }
    if incorrect is not None:
        record["incorrect_solutions"] = {
            "language": [s[0] for s in incorrect],
            "solution": [s[1] for s in incorrect],
        }
    return record


PY3 = "print(int(input()) + 1)\n"
PY2 = "print int(raw_input()) + 1\n"
CPP = "int main() { return 0; }"
JAVA = "class Main { public static void main(String[] a) {} }"
RECORDS = [
    _problem(
        "A", [(3, PY3), (2, CPP), (1, PY2), (4, JAVA)], incorrect=[(3, "print(0)\n"), (2, CPP)], difficulty=7
    ),
    _problem("B", [(4, JAVA), (3, PY3)], incorrect=[], difficulty=0),
    _problem("C", [(2, CPP)], incorrect=None, difficulty=11),
]
