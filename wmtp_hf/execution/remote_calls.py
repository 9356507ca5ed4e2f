"""Calls from the tests' process into the candidate's process, with only built-in values crossing the pipe.

Standard library only: `sandbox_server.py` loads this file by path. The candidate's process runs the program,
then `serve_candidate` answers calls; the tests' process (a separate, fresh process that never runs a line of
the candidate's code) gets a `CandidateChannel` and plain proxy functions for the few names of the candidate's
that the trusted tests need (`names_the_tests_need`): never a builtin, a dunder name or anything else the
program announces, so it cannot replace what the tests themselves use.

What crosses, as tagged JSON (one length-prefixed message per call or reply): None, bool, int, float, str,
bytes, complex, lists, tuples, dicts, sets and frozensets of them, and the built-in types themselves (`int`,
`str`, ...). The tests' process *decodes* every reply into fresh objects of exactly those types, so no object
of the candidate's ever exists there: always-equal objects, patched builtins or modules, tracers and frame
walks stay in the candidate's process, by construction. Subclasses of the built-in containers and scalars
(`collections.Counter`, `OrderedDict`, a `list` subclass) cross as their contents (the built-in type they
extend); anything else fails the call. Exceptions come back as their type name and message.

One exception to "fails the call": calling one of the candidate's *classes* (MBPP's `Pair(5, 24)`) and the
non-built-in globals that MBPP's setup code makes (`root = Node(1)`) give the tests an opaque `RemoteObject`:
a number naming the object, which stays in the candidate's process. It can only be passed back to the
candidate's functions; comparing it, testing its truth or hashing it raises TypeError.
"""

from __future__ import annotations

import ast
import builtins
import json
import keyword
import os
import struct
import sys
import types
from typing import Any

MAX_MESSAGE = 64 << 20  # bytes per message: a result larger than this fails the call
MAX_DEPTH = 200  # nesting of containers: deeper (or cyclic) values fail the call
_BUILTIN_TYPES = {
    name: value
    for name, value in vars(builtins).items()
    if isinstance(value, type) and not issubclass(value, BaseException)
}
_TYPE_NAMES = {value: name for name, value in _BUILTIN_TYPES.items()}
_BUILTIN_NAMES = frozenset(vars(builtins))
_ENCODE_SCALARS = (type(None), bool, int, float, str)
_NO_VALUE = object()


class ProtocolError(Exception):
    """A message that is not a well-formed encoding of built-in values."""


class NonBuiltinValue(ValueError):
    """A value that cannot cross: not made of built-in values."""


class NonBuiltinResult(AssertionError):
    """The candidate's function returned something that is not a built-in value (the tests fail)."""


class CandidateError(Exception):
    """An exception raised in the candidate's process whose type is not a built-in exception."""


class CandidateGone(Exception):
    """The candidate's process ended (or broke the protocol) while the tests were calling it."""


class RemoteObject:
    """An object that stays in the candidate's process; here only a number, to pass back to its functions."""

    __slots__ = ("ident",)

    def __init__(self, ident: int) -> None:
        self.ident = ident

    def __repr__(self) -> str:
        return f"<candidate object #{self.ident}>"

    def _no_value(self, *args: Any) -> Any:
        raise TypeError("an object of the candidate's has no value in the tests' process")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __hash__ = __len__ = _no_value  # type: ignore[assignment]


# --- values <-> tagged JSON ------------------------------------------------------------------------------


def encode(value: Any, objects: dict[int, Any] | None = None, depth: int = 0) -> Any:
    """`value` as JSON-ready data. `objects` (candidate side): the registry that RemoteObject numbers name;
    tests side (None): a RemoteObject encodes as its number. Raises NonBuiltinValue for anything else."""
    if depth > MAX_DEPTH:
        raise NonBuiltinValue("nested too deeply (or contains itself)")
    kind = type(value)
    if kind in _ENCODE_SCALARS:
        return value
    if kind is RemoteObject and objects is None:
        return ["h", value.ident]
    if kind is type and value in _TYPE_NAMES:
        return ["T", _TYPE_NAMES[value]]
    depth += 1
    if isinstance(value, int):  # a subclass of a scalar crosses as its value (exact type: the copy is fresh)
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return ["b", bytes(value).hex()]
    if isinstance(value, complex):
        return ["c", complex.__complex__(value).real, complex.__complex__(value).imag]
    if isinstance(value, dict):
        return ["d", [[encode(k, objects, depth), encode(v, objects, depth)] for k, v in dict.items(value)]]
    for base, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "f")):
        if isinstance(value, base):
            return [tag, [encode(e, objects, depth) for e in base.__iter__(value)]]
    raise NonBuiltinValue(f"a {kind.__name__}, not a built-in value")


def decode(data: Any, objects: dict[int, Any] | None = None, depth: int = 0) -> Any:
    """Fresh built-in values from `encode`'s output. `objects` (candidate side): resolves object numbers;
    tests side (None): they become RemoteObjects. Raises ProtocolError on anything malformed."""
    kind = type(data)
    if kind in _ENCODE_SCALARS:
        return data
    if kind is not list or len(data) < 2 or type(data[0]) is not str or depth > MAX_DEPTH + 1:
        raise ProtocolError("malformed value")
    tag, payload, depth = data[0], data[1], depth + 1
    try:
        if tag == "b" and type(payload) is str:
            return bytes.fromhex(payload)
        if tag == "c" and len(data) == 3 and all(type(x) in (int, float) for x in data[1:]):
            return complex(data[1], data[2])
        if tag == "T" and payload in _BUILTIN_TYPES:
            return _BUILTIN_TYPES[payload]
        if tag == "h" and type(payload) is int:
            return RemoteObject(payload) if objects is None else objects[payload]
        if type(payload) is not list:
            raise ProtocolError("malformed value")
        if tag == "d":
            pairs = [p for p in payload if type(p) is list and len(p) == 2]
            if len(pairs) != len(payload):
                raise ProtocolError("malformed dict")
            return {decode(k, objects, depth): decode(v, objects, depth) for k, v in pairs}
        items = [decode(e, objects, depth) for e in payload]
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "f":
            return frozenset(items)
    except (TypeError, ValueError, KeyError, RecursionError) as exc:  # e.g. an unhashable set element
        raise ProtocolError(f"malformed value ({type(exc).__name__})") from None
    raise ProtocolError(f"unknown tag {tag!r}")


# --- messages ----------------------------------------------------------------------------------------------


def send(fd: int, message: Any) -> None:
    """One message: 4-byte big-endian length, then compact JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise NonBuiltinValue(f"larger than {MAX_MESSAGE >> 20} MiB")
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> Any:
    """The next message; EOFError when the other side closed the pipe; ProtocolError when it is malformed."""
    (size,) = struct.unpack(">I", _read_exactly(fd, 4))
    if size > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        return json.loads(_read_exactly(fd, size))
    except (ValueError, RecursionError):
        raise ProtocolError("message is not JSON") from None


# --- the candidate's side ----------------------------------------------------------------------------------


def manifest(namespace: dict, objects: dict[int, Any]) -> list:
    """What the tests may use of the candidate's globals: [name, "call", is_class] for callables,
    [name, "module", module name] for standard-library modules, [name, "value", encoded] for built-in values,
    [name, "object", number] for anything else (kept in `objects`)."""
    out = []
    for name, value in list(namespace.items()):
        if type(name) is not str or name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType):
            module = getattr(value, "__name__", "")
            if isinstance(module, str) and module.split(".")[0] in sys.stdlib_module_names:
                out.append([name, "module", module])
        elif callable(value):
            out.append([name, "call", isinstance(value, type)])
        else:
            try:
                out.append([name, "value", encode(value, objects)])
            except (NonBuiltinValue, RecursionError):
                objects[id(value)] = value
                out.append([name, "object", id(value)])
    return out


def serve_candidate(namespace: dict, requests: int, replies: int) -> None:
    """Answer ["call", name, args, kwargs] with ["ok", value] | ["raise", type name, message] | ["reject", why]
    until the tests close the pipe. Runs in the candidate's (untrusted) process."""
    objects: dict[int, Any] = {}
    send(replies, ["ready", manifest(namespace, objects)])
    while True:
        try:
            request = receive(requests)
        except EOFError:
            return
        try:
            _, name, args, kwargs = request
            fn = namespace[name]
            args = decode(args, objects)
            kwargs = decode(kwargs, objects)
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every exception goes back to the tests
            reply: list = ["raise", type(exc).__name__, str(exc)[:2000]]
        else:
            try:
                reply = ["ok", encode(result, objects)]
            except (NonBuiltinValue, RecursionError) as exc:
                if isinstance(
                    fn, type
                ):  # an instance of one of its classes: stays here, the tests get a number
                    objects[id(result)] = result
                    reply = ["ok", ["h", id(result)]]
                else:
                    reply = ["reject", f"result: {exc}"]
        try:
            send(replies, reply)
        except NonBuiltinValue as exc:
            send(replies, ["reject", f"result: {exc}"])


def report_failure(replies: int, stage: str, exc: BaseException) -> None:
    """Tell the tests that the program itself failed (before any call)."""
    send(replies, ["failed", stage, type(exc).__name__, str(exc)[:2000]])


# --- the tests' side ---------------------------------------------------------------------------------------


class CandidateChannel:
    """The tests' end of the pipe. `fatal` records failures that must fail the run even when a test catches
    them (a non-built-in result, a dead candidate)."""

    def __init__(self, requests: int, replies: int) -> None:
        self.requests, self.replies, self.fatal = requests, replies, []

    def _receive(self) -> Any:
        try:
            return receive(self.replies)
        except (EOFError, ProtocolError, OSError) as exc:
            why = "its process ended" if isinstance(exc, EOFError) else str(exc)
            self.fatal.append(f"candidate: {why}")
            raise CandidateGone(self.fatal[-1]) from None

    def start(self) -> list:
        """The candidate's manifest; raises CandidateGone (with the program's own error) when it failed."""
        first = self._receive()
        if type(first) is list and len(first) == 2 and first[0] == "ready" and type(first[1]) is list:
            return first[1]
        if type(first) is list and len(first) == 4 and first[0] == "failed":
            self.fatal.append(f"{first[1]}: {first[2]}: {first[3]}")
            raise CandidateGone(self.fatal[-1])
        self.fatal.append("candidate: malformed first message")
        raise CandidateGone(self.fatal[-1])

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        try:
            send(self.requests, ["call", name, encode(list(args)), encode(kwargs)])
        except NonBuiltinValue as exc:
            raise TypeError(f"{name}: an argument is {exc}") from None
        except OSError:
            self.fatal.append("candidate: its process ended")
            raise CandidateGone(self.fatal[-1]) from None
        reply = self._receive()
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
            try:
                return decode(reply[1])
            except ProtocolError as exc:
                self.fatal.append(f"result: {exc}")
                raise NonBuiltinResult(self.fatal[-1]) from None
        if type(reply) is list and len(reply) == 3 and reply[0] == "raise":
            raise _exception(str(reply[1]), str(reply[2]))
        if type(reply) is list and len(reply) == 2 and reply[0] == "reject":
            self.fatal.append(str(reply[1])[:300])
            raise NonBuiltinResult(self.fatal[-1])
        self.fatal.append("candidate: malformed reply")
        raise CandidateGone(self.fatal[-1])

    def proxy(self, name: str) -> Any:
        """A plain function of the tests' process that calls the candidate's `name`."""

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call


def _exception(name: str, message: str) -> Exception:
    """The built-in exception called `name` (so `except ValueError` still works), else a CandidateError."""
    kind = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return CandidateError(f"{name}: {message}")


def names_the_tests_need(tests: dict) -> set[str]:
    """The candidate's names the tests' process binds, decided from the trusted tests alone (never from what the
    program announces): HumanEval's entry point; for asserts (MBPP), every name the asserts read and do not
    bind themselves that is neither a builtin nor a dunder name. The one builtin ever bound is an entry point
    that shadows one: when the asserts read no other name, the function the first assert calls (MBPP 126
    tests its own `sum`); a builtin the tests merely use (`abs(area(2) - 12.56)`) stays the builtin."""
    if tests["kind"] == "humaneval":
        names = {tests["entry_point"]}
    else:
        read, bound, first_call = set(), set(), None
        for line in tests["asserts"]:
            try:
                tree = ast.parse(line)
            except (SyntaxError, ValueError):
                continue  # fails when the tests' process runs it
            for node in ast.walk(tree):  # breadth first: the outermost call of a line comes first
                if isinstance(node, ast.Name):
                    (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
                elif first_call is None and isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    first_call = node.func.id
        names = {name for name in read - bound if name not in _BUILTIN_NAMES}
        if not names and first_call is not None:
            names = {first_call}
    return {name for name in names if _bindable(name)}


def _bindable(name: Any) -> bool:
    return (
        type(name) is str
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and not name.startswith("__")
    )


def bind_candidate(namespace: dict, channel: CandidateChannel, entries: list, wanted: set[str]) -> None:
    """Bind in the tests' `namespace` the names in `wanted` (from `names_the_tests_need`) that the candidate's
    announcement `entries` (untrusted input) names, and nothing else: a proxy per callable, its
    standard-library modules (imported here, fresh), its built-in values (decoded here), RemoteObjects for its
    other objects. A name announced twice counts once (the first); a name not announced stays unbound."""
    import importlib

    wanted = {name for name in wanted if _bindable(name)}  # validated here, whatever the caller passed
    for entry in entries:
        if type(entry) is not list or len(entry) != 3 or type(entry[0]) is not str or entry[0] not in wanted:
            continue
        name, kind, payload = entry
        wanted.discard(name)
        value: Any = _NO_VALUE
        if kind == "call":
            value = channel.proxy(name)
        elif kind == "module" and type(payload) is str and payload.split(".")[0] in sys.stdlib_module_names:
            try:
                value = importlib.import_module(payload)
            except ImportError:
                pass
        elif kind == "value":
            try:
                value = decode(payload)
            except ProtocolError:
                pass
        elif kind == "object" and type(payload) is int:
            value = RemoteObject(payload)
        if value is not _NO_VALUE:
            namespace[name] = value
