"""The one downstream runner: frozen upstream -> SUPERB weighted sum -> task head.

    run("ks", upstream="tera2", upstream_ckpt="ckpt.pt", name="ks_tera2")

trains on the task's training split, keeps the best dev checkpoint, evaluates it on the
test split and writes `result/downstream/<name>/results.json` (see README for the keys).
This module is the run from the outside: where its data and recipe come from, which
checkpoint is scored on the test split and what results.json records. The run's state and
training loop are `tera.downstream.training.Run`; the tasks, `tera.downstream.tasks`.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tera.corpora.base import check_generator, default_corpus_dir, is_embedded_corpus
from tera.downstream import CACHE_BUDGET_GB, DEFAULT_SEED
from tera.downstream.base import Scored, count_parameters
from tera.downstream.bootstrap import interval, items_path, read_items, write_items
from tera.downstream.recipe import apply_recipe_overrides, check_recipe, load_recipe
from tera.downstream.tasks import task_class
from tera.downstream.training import Run, read_downstream_ckpt
from tera.errors import UserError
from tera.runs.checkpoints import downstream_states, downstream_step
from tera.runs.files import check_writable, ensure_folder, write_text
from tera.runs.lock import folder_lock
from tera.runs.log import RunLog
from tera.runs.records import DownstreamResult, write_result


def resolve_data_root(task: str, data_root: str | Path | None) -> tuple[Path, bool]:
    """(the task's corpus folder, whether it is the embedded corpus)."""
    root = Path(data_root) if data_root else default_corpus_dir("default")
    if is_embedded_corpus(root):  # pick its part
        check_generator(root)
        return root / task_class(task).corpus_part, True
    if not root.exists():
        raise UserError(f"{root}: no data. Generate the embedded corpus with `tera corpus "
                        f"synth` or pass --data-root with your {task_class(task).corpus_part} "
                        "folder")
    return root, False


# --- entry point ------------------------------------------------------------------------------


def run(task: str, *, mode: str = "train", upstream: str = "tera2",
        upstream_ckpt: str | None = None, name: str | None = None,
        expdir: str | Path | None = None, config: str | None = None,
        overrides: list[str] | None = None, data_root: str | Path | None = None,
        init_ckpt: str | Path | None = None, test_split: str | None = None,
        seed: int = DEFAULT_SEED, cache: bool = True, device: str = "cpu",
        upstream_preset: str = "slim", cache_budget_gb: float = CACHE_BUDGET_GB,
        cache_dir: str | Path | None = None) -> dict:
    """Train (then test) or evaluate one downstream task; returns results.json's content.

    `task` is a task name or s3prl alias (`tera.downstream.tasks`); with `init_ckpt` (a
    downstream checkpoint) the task, upstream, recipe and seed come from it, to resume
    (`mode="train"`) or to evaluate. Without `data_root` the embedded corpus and the
    recipes' embedded profile are used. The run folder is `expdir`, else
    `result/downstream/<name>`."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    random.seed(seed)
    if init_ckpt is not None:  # evaluate or resume: everything comes from the checkpoint
        state = read_downstream_ckpt(Path(init_ckpt))
        task, upstream = state["task"], state["upstream"]
        upstream_ckpt = upstream_ckpt or state["upstream_ckpt"]
        cfg = OmegaConf.create(state["config"])
        apply_recipe_overrides(task, cfg, overrides or [])
        check_recipe(task, cfg)
        expdir = Path(expdir) if expdir else Path(init_ckpt).parent
        seed = int(state.get("seed", seed))
        data_root = data_root or state.get("data_root")
        upstream_preset = state.get("upstream_preset", upstream_preset)
    else:
        task = task_class(task).name
        if expdir is None:
            expdir = Path("result") / "downstream" / (name or f"{task}_{upstream}")
        expdir = Path(expdir)
        cfg = None
    if data_root is None:
        say(task, f"no --data-root: the embedded corpus at {default_corpus_dir('default')} "
                  "with the recipes' embedded profile (--data-root DIR for your corpus)")
    root, embedded = resolve_data_root(task, data_root)
    profile = "embedded" if embedded else "real"
    if cfg is None:
        cfg = load_recipe(task, config, profile if embedded else None, overrides or [])
    check_writable(ensure_folder(expdir) / "results.json")  # before any feature is computed
    with folder_lock(expdir, "tera downstream"):
        write_text(expdir / "config.yaml", OmegaConf.to_yaml(cfg))
        log = RunLog(expdir, tensorboard="tb", step_key="step", echo_prefix=f"[{task}] ")
        try:
            job = Run(task, cfg, root, upstream, upstream_ckpt, expdir, device, cache, seed,
                      upstream_preset, profile, Path(cache_dir) if cache_dir else None)
            result = _run(job, mode, init_ckpt, test_split, cache_budget_gb * 1e9, log)
        finally:
            log.close()
        result.wall_time_s = time.perf_counter() - started
        write_result(expdir, result)
    return result.to_dict()


def say(task: str, line: str) -> None:
    """One line on stderr, prefixed with the task's name as the run's log lines are."""
    print(f"[{task}] {line}", file=sys.stderr, flush=True)


def _run(job: Run, mode: str, init_ckpt: str | Path | None, test_split: str | None,
         cache_budget: float, log: RunLog) -> DownstreamResult:
    """Train and test, or evaluate, `job` in its locked folder: the scored checkpoint's
    predictions and per-item statistics written, its `DownstreamResult` returned."""
    if init_ckpt is not None:
        job.load(Path(init_ckpt))
    task, split = job.task, test_split or job.task.test_split
    if mode == "train":
        train = task.examples(task.train_split)
        evaluated = [u for name in (task.dev_split, split) if name
                     for u in task.examples(name)]
        say(task.name, job.plan_cache(train + evaluated, cache_budget))
        job.train(log.write, train)
        if task.dev_split:
            checkpoint = job.expdir / task.best_name
            job.load(checkpoint)
            scored = job.evaluate(split)
        else:  # no dev set (s3prl's ASV): its protocol chooses among the saved checkpoints
            protocol = _s3prl_protocol(job, split)
            checkpoint = job.expdir / protocol["checkpoint"]
            job.load(checkpoint)
            scored = protocol["scored"][protocol["checkpoint"]]
    elif mode == "evaluate":
        if init_ckpt is None:
            raise UserError("-m evaluate needs -e CHECKPOINT (e.g. result/downstream/NAME/"
                            "dev-best.ckpt)")
        say(task.name, job.plan_cache(task.examples(split), cache_budget))
        checkpoint = Path(init_ckpt)
        scored = job.evaluate(split)
    else:
        raise UserError(f"unknown mode {mode!r}; expected train or evaluate")

    value, lines, items = scored
    write_text(job.expdir / f"{split}_predictions.txt", "\n".join(lines) + "\n")
    write_items(items_path(job.expdir, split), items)
    result = DownstreamResult(
        task=task.name, metric=task.metric, value=value, split=split,
        checkpoint=str(checkpoint), upstream=job.upstream_name, upstream_ckpt=job.upstream_ckpt,
        layer_weights=job.featurizer.layer_weights.tolist(), step=job.step, wall_time_s=0.0,
        dev_best=job.best,
        cache={"enabled": job.cache.enabled, "hits": job.cache.hits,
               "misses": job.cache.misses, "folder": str(job.cache.folder or "")})
    result.extra.update({
        "interval": interval([items]),  # 95 % bootstrap interval of `value`
        "head_parameters": count_parameters(job.head),
        "data_root": str(job.root), "profile": job.profile,
        "recipe": OmegaConf.to_container(job.cfg)})
    if task.name == "asv" and mode == "train":
        if task.dev_split:
            result.dev_eer = job.best
            result.extra["dev_eer_interval"] = interval([read_items(job.best_items_path())])
            protocol = _s3prl_protocol(job, split)
        result.best_test_eer_over_checkpoints = protocol
        result.extra["last_checkpoint_eer"] = _last_checkpoint(job, split,
                                                               protocol.pop("scored"))
    return result


def _s3prl_protocol(job: Run, split: str) -> dict:
    """s3prl's ASV number (`test_expdir.sh`): the test EER of the checkpoints saved at
    multiples of `runner.test_checkpoints_every` (every saved one when none is), the best
    one; a selection on the test set, labelled as such. `scored` holds each evaluated
    checkpoint's `Scored`, by name (removed before the dict is reported)."""
    every = int(job.cfg.runner.get("test_checkpoints_every") or 1)
    saved = downstream_states(job.expdir)
    chosen = [p for p in saved if downstream_step(p) % every == 0] or saved
    scored = {}
    for path in chosen:
        job.load(path)
        scored[path.name] = job.evaluate(split)
    scores = {name: s.value for name, s in scored.items()}
    best = min(scores, key=scores.get)
    return {"protocol": "s3prl: min test EER over saved checkpoints (selected on test)",
            "value": scores[best], "checkpoint": best, "all": scores,
            "interval": interval([scored[best].items]), "scored": scored}


def _last_checkpoint(job: Run, split: str, scored: dict[str, Scored]) -> dict:
    """The dev-free alternative to s3prl's protocol: the last checkpoint's test EER, no
    selection at all (taken from `scored` when the protocol evaluated it already)."""
    last = downstream_states(job.expdir)[-1]
    if last.name not in scored:
        job.load(last)
        scored = {last.name: job.evaluate(split)}
    scored = scored[last.name]
    return {"protocol": "last checkpoint (no selection)", "value": scored.value,
            "checkpoint": last.name, "interval": interval([scored.items])}
