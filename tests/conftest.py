"""Shared fixtures: the small embedded corpus, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tera.corpora.synthetic import synthesize


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "small"
    synthesize(root, "small", seed=0, progress=False)
    return root
