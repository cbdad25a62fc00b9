"""Where a pre-training runs: its device and, under `torchrun`, its process group.

Both are checked before the model is built or any data read, so that a machine without
CUDA, an incomplete set of distributed variables or a peer that never comes ends with one
line saying what is missing, not a traceback or a silent wait.

The process group is joined in a helper thread while the main thread waits for it, so
Ctrl-C and SIGTERM act during the wait (a blocked rendezvous holds no Python code that could
run a signal handler), and the wait ends after `distributed_training.init_timeout` seconds.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from tera.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class Placement:
    """This process's place in the run: rank, number of processes, rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def distributed_env(environ: dict[str, str] | None = None) -> Placement:
    """The placement `torchrun` states in RANK / WORLD_SIZE / LOCAL_RANK (a single process
    without them); `UserError` when they are not integers, out of range, or a multi-process
    run lacks MASTER_ADDR / MASTER_PORT."""
    environ = os.environ if environ is None else environ
    world = _env_int(environ, "WORLD_SIZE", 1, minimum=1)
    rank = _env_int(environ, "RANK", 0, minimum=0)
    local = _env_int(environ, "LOCAL_RANK", 0, minimum=0)
    if rank >= world:
        raise UserError(f"RANK={rank} is not below WORLD_SIZE={world}: ranks run from 0 to "
                        f"{world - 1}")
    if world > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
        if missing:
            raise UserError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set: start "
                            "the processes with torchrun, or set MASTER_ADDR and MASTER_PORT "
                            "(or unset WORLD_SIZE for one process)")
        _env_int(environ, "MASTER_PORT", 0, minimum=1)
    return Placement(rank, world, local)


def _env_int(environ: dict[str, str], name: str, default: int, minimum: int) -> int:
    text = environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer") from None
    if value < minimum:
        raise UserError(f"environment variable {name}={value} must be {minimum} or more")
    return value


def training_device(choice: str, local_rank: int) -> torch.device:
    """The device `common.device` asks for (auto: CUDA when there is one); `UserError` when
    CUDA is asked for and absent, or this rank has no GPU of its own."""
    if choice not in DEVICES:
        raise UserError(f"common.device={choice!r}: choose one of {', '.join(DEVICES)}")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this torch is built without CUDA" if torch.version.cuda is None
               else "no GPU is visible")
        raise UserError(f"common.device=cuda but CUDA is not available ({why}); use "
                        "common.device=cpu or common.device=auto")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank} but this machine has "
                        f"{torch.cuda.device_count()} GPU(s): start at most one process a GPU")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def start_process_group(backend: str, device: torch.device, placement: Placement,
                        timeout_s: float) -> None:
    """Join the run's process group, waiting at most `timeout_s` for every process;
    Ctrl-C / SIGTERM end the wait. `UserError` when the peers do not come in time."""
    if backend not in BACKENDS:
        raise UserError(f"distributed_training.distributed_backend={backend!r}: choose one "
                        f"of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    if placement.rank == 0:
        print(f"tera pretrain: waiting up to {timeout_s:g} s for {placement.world_size} "
              f"processes at {where} (distributed_training.init_timeout)", file=sys.stderr)
    failure: list[BaseException] = []

    def join() -> None:
        try:
            if device.type == "cuda":  # the current device is per thread
                torch.cuda.set_device(device)
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except BaseException as err:  # reported by the waiting thread
            failure.append(err)

    # A daemon: if the wait is interrupted, the thread must not keep the process alive.
    joiner = threading.Thread(target=join, name="tera-rendezvous", daemon=True)
    joiner.start()
    deadline = time.monotonic() + timeout_s + 10  # torch's own timeout should come first
    while joiner.is_alive() and time.monotonic() < deadline:
        joiner.join(0.1)  # short waits: signal handlers run between them
    if failure or joiner.is_alive():
        err = failure[0] if failure else TimeoutError("no answer")
        reason = " ".join(str(err).split())[:160]
        raise UserError(f"distributed start: rank {placement.rank} of {placement.world_size} "
                        f"could not join the other processes at {where} within "
                        f"{timeout_s:g} s (distributed_training.init_timeout): start every "
                        f"rank, or check MASTER_ADDR / MASTER_PORT ({reason})") from err
