"""tera-speech: pre-train TERA and evaluate it on SUPERB-style tasks."""

__version__ = "0.1.0"
