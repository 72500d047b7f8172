"""Shared fixtures: one cache folder per test session, so the quick world is built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def trimtab_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point TRIMTAB_CACHE at the CI cache when set, else at a fresh session folder."""
    existing = os.environ.get("TRIMTAB_CACHE")
    path = Path(existing) if existing else tmp_path_factory.mktemp("trimtab-cache")
    os.environ["TRIMTAB_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory, trimtab_cache: Path) -> Path:
    """Run `trimtab demo --quick` once through the real CLI; tests read its output folder."""
    from trimtab.cli import main

    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--quick", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def quick_refs(trimtab_cache: Path):
    """The quick world's base and aligned models (built once per cache, then reused)."""
    from trimtab.demo import QUICK_BUILD, QUICK_WORLD
    from trimtab.worlds.synthetic.build import build_references

    return build_references(QUICK_WORLD, QUICK_BUILD, progress=False)


@pytest.fixture(scope="session")
def quick_world():
    """The quick world itself (records, splits, oracle), as the quick references saw it."""
    from trimtab.demo import QUICK_WORLD
    from trimtab.worlds.synthetic import SyntheticWorld

    return SyntheticWorld(QUICK_WORLD)
