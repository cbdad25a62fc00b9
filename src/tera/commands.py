"""Which sub-commands `tera` has: each area contributes its own parsers."""

from __future__ import annotations

import argparse

from tera.corpora.commands import add_corpus_commands
from tera.downstream.cache_commands import add_cache_commands
from tera.downstream.commands import add_downstream_commands
from tera.inference import add_inference_commands
from tera.pretrain.commands import add_pretrain_commands
from tera.study_commands import add_study_commands


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add every area's sub-commands to `sub`, in the order `tera --help` lists them."""
    add_inference_commands(sub)  # extract, info, convert
    add_pretrain_commands(sub)  # manifest, pretrain, plan
    add_corpus_commands(sub)  # corpus synth, corpus check
    add_downstream_commands(sub)  # downstream
    add_cache_commands(sub)  # cache ls, cache prune
    add_study_commands(sub)  # study
