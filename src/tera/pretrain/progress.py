"""What a pre-training run logs between two log lines."""

from __future__ import annotations

import math

LN2 = math.log(2)  # fairseq logs losses in base 2: loss / ln 2


class Window:
    """Running sums between two log lines."""

    def __init__(self) -> None:
        self.count, self.seconds = 0, 0.0
        self.skipped = 0  # updates skipped for a non-finite value (mixed precision)
        self.sums: dict[str, float] = {}

    def add(self, stats: dict, seconds: float) -> None:
        """Count one update's statistics and how long it took."""
        self.count += 1
        self.seconds += seconds
        for key in ("loss", "reconstruction", "features_pen", "grad_norm", "audio_seconds"):
            self.sums[key] = self.sums.get(key, 0.0) + stats[key]
        self.sums["lr"] = stats["lr"]

    def summary(self, update: int) -> dict:
        """The window's means as one log record for `update` (loss in bits, as fairseq logs it)."""
        mean = {k: v / self.count for k, v in self.sums.items() if k not in ("lr",)}
        return {
            "update": update, "loss": mean["loss"] / LN2, "loss_nats": mean["loss"],
            "reconstruction": mean["reconstruction"],
            "features_pen": mean["features_pen"], "grad_norm": mean["grad_norm"],
            "lr": self.sums["lr"], "updates_per_s": self.count / max(self.seconds, 1e-9),
            "audio_seconds_per_s": self.sums["audio_seconds"] / max(self.seconds, 1e-9),
            "skipped_updates": self.skipped,
        }
