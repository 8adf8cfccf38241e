"""Pytest fixtures and hooks only; the plain helpers they use (and the tests import) are in
``tests/helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import RECIPES_5K, make_recipes


@pytest.fixture
def shared_5k() -> Path:
    if not RECIPES_5K.exists():
        pytest.skip("../shared/data/recipes/recipes-5k.txt not present")
    return RECIPES_5K


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    p = tmp_path / "tiny-recipes.txt"
    p.write_text(make_recipes(300))
    return p


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items) -> None:
    """Every test on a cluster (marked ``slurm``) is also ``slow``: ``-m "not slow"`` leaves it out."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)
