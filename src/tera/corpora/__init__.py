"""Corpora: loaders for the on-disk layouts users have (LibriSpeech, Speech Commands v1,
VoxCeleb1) and the offline generator of the embedded corpus, written in the same layouts."""

from tera.corpora.base import (
    Utterance,
    default_corpus_dir,
    is_embedded_corpus,
    read_segment,
    tera_home,
)

__all__ = ["Utterance", "default_corpus_dir", "is_embedded_corpus", "read_segment", "tera_home"]
