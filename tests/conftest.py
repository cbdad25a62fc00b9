"""Shared fixtures: the small embedded corpus, generated once per test session, and a
temporary tera-speech home."""

from __future__ import annotations

from pathlib import Path

import pytest

from tera.corpora.synthetic import synthesize


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "small"
    synthesize(root, "small", seed=0, progress=False)
    return root


@pytest.fixture(scope="session", autouse=True)
def tera_home_in_a_temporary_folder(tmp_path_factory):
    """What tera-speech keeps under its home (the utterance lengths of each corpus) goes to
    a temporary folder during the tests, not to the user's ~/.cache."""
    import os

    previous = os.environ.get("TERA_SPEECH_HOME")
    os.environ["TERA_SPEECH_HOME"] = str(tmp_path_factory.mktemp("tera-home"))
    yield
    if previous is None:
        os.environ.pop("TERA_SPEECH_HOME", None)
    else:
        os.environ["TERA_SPEECH_HOME"] = previous
