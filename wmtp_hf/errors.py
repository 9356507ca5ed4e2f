"""User errors: bad input, reported in one line that names the file, line, field or option and what was
expected. Every such error derives from `WmtpError`; each command catches `WmtpError` once (`report`),
prints `error: <message>` and exits non-zero, with no traceback. Anything else is a bug and keeps its
traceback. `WmtpError` is a `ValueError`, so code that catches `ValueError` keeps working."""

from __future__ import annotations

import sys


class WmtpError(ValueError):
    """The base of every one-line user error."""


class UsageError(WmtpError):
    """A command-line value that cannot be used (names the option)."""


class ConfigError(WmtpError):
    """Invalid configuration; the message names the file and key."""


class DataError(WmtpError):
    """Bad input data: the message is one line naming the file, line, field and what was expected."""


class LoadError(WmtpError):
    """A model, tokenizer, device or dtype that cannot be used (one line)."""


class ModelError(WmtpError):
    """A named model or GGUF file that cannot be fetched or converted (one line; callers prefix the name)."""


class ConversionError(WmtpError):
    """A checkpoint that cannot be converted; the message names the file or key."""


class PublishError(WmtpError):
    """Invalid input to a publish, or a push that failed; the message is one line naming the file or option."""


class SamplesError(WmtpError):
    """Bad samples file: the message is one line naming the file, line and what was expected."""


class InspectError(WmtpError):
    """Bad input to the inspect command: one line naming the option."""


class TrainedProblemsError(WmtpError):
    """An unreadable trained_problems.json (one line naming the file and key)."""


def report_error(err: Exception, prefix: str = "", status: int = 2) -> int:
    """Print `err` as the command's one `error:` line on stderr; return the exit status (2: bad input;
    commands whose failure is not the input's, e.g. a download, pass 1)."""
    message = " ".join(str(err).split())
    print(f"error: {prefix}{message}", file=sys.stderr)
    return status
