"""Small helpers for the messages and checks every command shares (error lines, Hub ids)."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` is syntactically a Hub repo id (`name` or `org/name`) rather than a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True
