"""One base class for user errors (`wmtp_hf.errors.WmtpError`), caught once per command: every command
turns bad input into one `error:` line on stderr and exit status 2, with no traceback."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from wmtp_hf import errors

PACKAGE = Path(errors.__file__).parent
# Internal signals of the sandbox's call protocol (never shown to a user), not user errors.
INTERNAL = {"NonBuiltinValue", "ProtocolError", "CandidateError"}


def test_every_user_error_class_derives_from_the_base():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) >= 10
    assert all(issubclass(c, errors.WmtpError) and issubclass(c, ValueError) for c in classes)


def test_no_other_error_class_derives_from_valueerror():
    """A one-line user error defined anywhere else would escape the commands' single `except`."""
    stray = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name not in INTERNAL:
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & {"ValueError", "Exception"} and node.name.endswith("Error"):
                    stray.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert stray == [], f"define user errors in wmtp_hf/errors.py: {stray}"


def _commands(tmp_path):
    from wmtp_hf.data.__main__ import main as data_main
    from wmtp_hf.evaluate import main as evaluate_main
    from wmtp_hf.experiment.__main__ import main as experiment_main
    from wmtp_hf.inspect import main as inspect_main
    from wmtp_hf.publish import main as publish_main
    from wmtp_hf.train.cli import main as train_main

    missing = str(tmp_path / "missing")
    return {
        "train": (train_main, ["--stage", "baseline", "--max_steps", "-3"]),
        "experiment": (experiment_main, ["--config", missing + ".yaml"]),
        "evaluate": (
            evaluate_main,
            ["--samples", missing, "--dataset", "offline", "--k", "0", "--output", missing],
        ),
        "inspect": (inspect_main, ["--model", missing, "--dataset", "offline", "--output", missing]),
        "data": (data_main, ["prepare", "--source", "apps", "--output", missing]),
        "publish": (publish_main, ["--model", missing, "--repo-id", "me/x"]),
    }


@pytest.mark.parametrize("command", ["train", "experiment", "evaluate", "inspect", "data", "publish"])
def test_each_command_reports_bad_input_in_one_line(command, tmp_path, capsys):
    main, argv = _commands(tmp_path)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert not (tmp_path / "missing").exists()  # nothing half-written
