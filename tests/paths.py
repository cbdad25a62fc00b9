"""Where the test data lives: `tests/data/`, inside the repository (see its README)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
FLAC = DATA / "librispeech-6313-76958-0021.flac"
COMPAT = DATA / "compat"
