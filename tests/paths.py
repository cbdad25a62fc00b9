"""Where the shared test data lives: `shared/` beside the checkout (as in CI)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLAC = SHARED / "data" / "librispeech-6313-76958-0021.flac"
COMPAT = SHARED / "data" / "compat"
