"""Packaging: every subpackage is listed in pyproject.toml and the shipped data files are reachable."""

from __future__ import annotations

import tomllib
from pathlib import Path

import wmtp_hf

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "wmtp_hf").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_configs_and_model_cards_ship_inside_the_package():
    package = Path(wmtp_hf.__file__).parent
    assert (package / "configs" / "micro.yaml").read_text() == (REPO / "configs" / "micro.yaml").read_text()
    assert (package / "model_cards" / "wmtp_model_card.md").is_file()
