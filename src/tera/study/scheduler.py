"""Running the study's jobs: each a `tera` command in its own process, N at a time, with
progress lines and an ETA on stderr.

    run_jobs([Job("pre-train ...", ["pretrain", ...], log, cost, total), ...], 2, 1, started)
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tera.errors import UserError, raise_terminated


@dataclass(eq=False)
class Job:
    """One step of the study: a `tera` command whose output lands in the study folder."""

    name: str  # what the progress lines call it
    args: list[str]  # the `tera` command line that does it
    log: Path  # its stdout and stderr
    cost: float  # expected seconds, for the ETA
    total: int  # its updates or steps, for the progress lines
    needs: Job | None = None  # starts only once this one has finished


def default_jobs() -> int:
    """Two jobs at a time on a CPU (tiny models use two cores poorly: two one-thread
    pre-trainings do more updates than one two-thread pre-training on a 2-core machine,
    benchmarks/study_jobs.py), one on a GPU."""
    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def say(started: float, text: str, eta_s: float | None = None) -> None:
    """One progress line on stderr: minutes since `started`, the ETA if known, `text`."""
    eta = "" if eta_s is None else f", ETA {eta_s / 60:.0f} min"
    print(f"[study | {(time.perf_counter() - started) / 60:.1f} min{eta}] {text}",
          file=sys.stderr, flush=True)


class Board:
    """The progress lines: one when a job starts or ends, and every minute what the running
    jobs are at. The ETA is the remaining jobs' expected cost, scaled by the time the finished
    ones took against theirs, shared among the workers."""

    def __init__(self, jobs: list[Job], workers: int, started: float) -> None:
        self.count, self.workers, self.started = len(jobs), workers, started
        self.cost_left = sum(job.cost for job in jobs)
        self.spent = self.counted = 0.0  # seconds and cost of the finished jobs
        self.running: dict[Job, float] = {}
        self.done = 0
        self.last = time.perf_counter()

    def eta(self) -> float:
        """Seconds until every job is done, at the pace of the finished ones."""
        rate = self.spent / self.counted if self.counted else 1.0
        now = time.perf_counter()
        under_way = sum(min(now - since, 0.9 * job.cost * rate)
                        for job, since in self.running.items())
        return max(self.cost_left * rate - under_way, 0.0) / self.workers

    def say(self, text: str) -> None:
        """A progress line with the count of finished jobs and the ETA."""
        say(self.started, f"{self.done}/{self.count} done; {text}", self.eta())
        self.last = time.perf_counter()

    def start(self, job: Job) -> None:
        """`job` has started."""
        self.running[job] = time.perf_counter()
        self.say(f"start {job.name}")

    def finish(self, job: Job) -> None:
        """`job` has finished: its time goes into the ETA's pace."""
        taken = time.perf_counter() - self.running.pop(job)
        self.spent, self.counted = self.spent + taken, self.counted + job.cost
        self.cost_left -= job.cost
        self.done += 1
        self.say(f"finished {job.name} in {taken / 60:.1f} min")

    def tick(self) -> None:
        """Where the running jobs are, once a minute."""
        if self.running and time.perf_counter() - self.last >= 60:
            self.say("running: " + "; ".join(f"{job.name} ({job_position(job)})"
                                             for job in self.running))


def job_position(job: Job) -> str:
    """'update 1200/3000' from the last progress record in the job's log."""
    try:
        with open(job.log, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "starting"
    for line in reversed(lines):
        try:
            record = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        for key in ("update", "step"):
            if isinstance(record, dict) and key in record:
                return f"{key} {record[key]}/{job.total}"
    return "starting"


def run_jobs(jobs: list[Job], workers: int, threads: int, started: float) -> None:
    """Run every job as a `tera` process, `workers` at a time with `threads` threads each; a
    job waits for the job it needs. Pre-training goes first (the downstream jobs wait for
    it), then the longest jobs, so that no long job is left running alone at the end.

    Ctrl-C or SIGTERM stops the running jobs the way their commands stop (a pre-training
    saves its state) and the study with them; a failed job stops the study with the end of
    its log."""
    board = Board(jobs, workers, started)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running, finished = list(jobs), {}, set()
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        while pending or running:
            for job, process in list(running.items()):
                if process.poll() is None:
                    continue
                del running[job]
                if process.returncode in (130, 143):  # stopped by SIGINT / SIGTERM
                    raise KeyboardInterrupt
                if process.returncode:
                    raise UserError(f"{job.name} failed (exit status {process.returncode}); "
                                    f"the end of {job.log}:\n{_tail(job.log)}")
                finished.add(job)
                board.finish(job)
            ready = [job for job in pending if job.needs is None or job.needs in finished]
            ready.sort(key=lambda job: (job.args[0] != "pretrain", -job.cost))
            for job in ready[: workers - len(running)]:
                pending.remove(job)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "a") as log:
                    log.write(f"$ tera {shlex.join(job.args)}\n")
                    log.flush()
                    running[job] = subprocess.Popen([sys.executable, "-m", "tera.cli", *job.args],
                                                    stdout=log, stderr=subprocess.STDOUT, env=env)
                board.start(job)
            if not running and pending:
                raise UserError("study jobs wait for jobs that are not in the study: "
                                + ", ".join(job.name for job in pending))
            board.tick()
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in running.values():  # a pre-training saves its state on SIGTERM
            process.send_signal(signal.SIGTERM)
        for process in running.values():
            try:
                process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                process.kill()


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
