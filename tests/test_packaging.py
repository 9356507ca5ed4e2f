"""Packaging: setuptools finds every subpackage and the data folders, and the shipped data files are reachable."""

from __future__ import annotations

import tomllib
from pathlib import Path

import wmtp_hf

REPO = Path(__file__).resolve().parents[1]


def test_package_discovery_finds_every_package_and_the_data_folders():
    """What setuptools finds with pyproject's [tool.setuptools.packages.find] (the same call a build
    makes): every package with an __init__.py, the configs and model-card folders, and no cache folders."""
    from setuptools import find_namespace_packages

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces") is True
    found = set(find_namespace_packages(str(REPO), include=find["include"], exclude=find.get("exclude", [])))
    packages = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "wmtp_hf").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert packages <= found, f"not found: {sorted(packages - found)}"
    assert {"wmtp_hf.configs", "wmtp_hf.model_cards"} <= found
    assert not [p for p in found if "__pycache__" in p or not p.startswith("wmtp_hf")]


def test_configs_and_model_cards_ship_inside_the_package():
    package = Path(wmtp_hf.__file__).parent
    assert (package / "configs" / "micro.yaml").read_text() == (REPO / "configs" / "micro.yaml").read_text()
    assert (package / "model_cards" / "wmtp_model_card.md").is_file()
