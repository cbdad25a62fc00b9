"""Tables and plots of a study: the SUPERB-style table with a 95 % bootstrap interval for
every metric, the paired significance tests between upstreams, the valley curve (with error
bars), pre-training loss curves and the learned layer weights, written as `report.md`,
`report.json` and PNG files. Intervals and tests: `tera.downstream.bootstrap`."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tera.downstream.bootstrap import LEVEL, RESAMPLES, SEED, Items, paired_difference
from tera.downstream.tasks import TASK_CLASSES, task_class
from tera.runs.files import write_json, write_text


@dataclass
class UpstreamResult:
    """One row of the study: an upstream and what it scored.

    metrics hold fractions (0.25 = 25 %), the mean over the seeds; intervals their bootstrap
    intervals (`tera.downstream.bootstrap.interval` records); seed_values each seed's value;
    budget is the compute fraction of a pre-trained TERA (None for baselines); size_percent
    is the % size of the study's 100 % model.
    """

    name: str
    kind: str  # "tera2" | "random" | "fbank" | "mfcc"
    parameters: int = 0
    size_percent: float | None = None
    budget: float | None = None
    pretrain_updates: int = 0
    pretrain_flops: float = 0.0
    pretrain_wall_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, dict] = field(default_factory=dict)
    seed_values: dict[str, list[float]] = field(default_factory=dict)
    layer_weights: dict[str, list[float]] = field(default_factory=dict)
    loss_curve: list[dict[str, float]] = field(default_factory=list)


def write_report(results: list[UpstreamResult], out_dir: Path, title: str,
                 notes: list[str] | None = None,
                 items: dict[str, dict[str, list[Items]]] | None = None) -> Path:
    """Write report.md, report.json and the figures into `out_dir`; returns report.md.
    `items` ({upstream: {task: [per-item statistics of each seed]}}) gives the paired
    tests."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tests = comparisons(results, items or {})
    figures = {
        "valley": plot_valley_curve(results, out_dir / "valley_curve.png"),
        "loss": plot_loss_curves(results, out_dir / "pretrain_loss.png"),
        "weights": plot_layer_weights(results, out_dir / "layer_weights.png"),
    }
    payload = {"title": title, "notes": notes or [],
               "bootstrap": {"level": LEVEL, "resamples": RESAMPLES, "seed": SEED,
                             "method": "percentile bootstrap over the test items; paired "
                             "(the same resamples) for differences",
                             "units": {task: bounds["unit"] for r in results
                                       for task, bounds in r.intervals.items()}},
               "upstreams": [{**asdict(r), "seed_std": seed_spread(r)} for r in results],
               "comparisons": tests,
               "figures": {k: v.name for k, v in figures.items() if v is not None}}
    write_json(out_dir / "report.json", payload)

    lines = [f"# {title}", "", superb_table(results), ""]
    lines += [f"- {note}" for note in notes or []]
    lines += [f"- cells: the metric [its {LEVEL:.0%} bootstrap interval over the test items: "
              f"{RESAMPLES} resamples of utterances, of speakers for ASV]"
              + ("; mean ± standard deviation over the seeds (the interval resamples the "
                 "seeds too)" if _several_seeds(results) else "")]
    if tests:
        lines += ["", "## Which differences are significant", "", significance_text(), ""]
        lines += significance_tables(tests)
    captions = {
        "valley": "Valley curve: downstream error against model size, one line per budget",
        "loss": "Pre-training loss (train, and validation where logged)",
        "weights": "Learned SUPERB layer weights per task",
    }
    for key, path in figures.items():
        if path is not None:
            lines += ["", f"## {captions[key]}", "", f"![{captions[key]}]({path.name})"]
    report = out_dir / "report.md"
    write_text(report, "\n".join(lines) + "\n")
    return report


def seed_spread(r: UpstreamResult) -> dict[str, float | None]:
    """Standard deviation of each task's metric over the seeds (None with one seed)."""
    return {task: statistics.stdev(values) if len(values) > 1 else None
            for task, values in r.seed_values.items()}


def _several_seeds(results: list[UpstreamResult]) -> bool:
    return any(len(v) > 1 for r in results for v in r.seed_values.values())


def metric_cell(r: UpstreamResult, task: str) -> str:
    """'55.40 [52.10, 58.70]', with seeds '55.40 ± 1.20 [52.10, 58.70]' (in %)."""
    value = r.metrics.get(task)
    if value is None:
        return "–"
    text = f"{100 * value:.2f}"
    spread = seed_spread(r).get(task)
    if spread is not None:
        text += f" ± {100 * spread:.2f}"
    bounds = r.intervals.get(task)
    if bounds:
        text += f" [{100 * bounds['low']:.2f}, {100 * bounds['high']:.2f}]"
    return text


def superb_table(results: list[UpstreamResult]) -> str:
    """Markdown table: rows upstreams, columns the five tasks, size, FLOPs and wall time."""
    header = ["upstream", *(task.header for task in TASK_CLASSES), "params",
              "pre-train FLOPs", "wall"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.name]
        for task in TASK_CLASSES:
            cells.append(metric_cell(r, task.name))
        cells.append(f"{r.parameters / 1e6:.2f} M" if r.parameters else "–")
        cells.append(f"{r.pretrain_flops:.2e}" if r.pretrain_flops else "–")
        cells.append(_duration(r.pretrain_wall_s) if r.pretrain_wall_s else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# --- paired tests -----------------------------------------------------------------------------


def comparison_pairs(results: list[UpstreamResult]) -> list[tuple[str, UpstreamResult,
                                                                  UpstreamResult]]:
    """(family, a, b): every pre-trained TERA against the random TERA and against FBANK,
    each size at the full budget against each lower budget, and neighbouring sizes of each
    budget (the valley curve)."""
    pretrained = [r for r in results if r.kind == "tera2"]
    pairs = []
    for family, kind in (("pre-trained vs random TERA", "random"), ("TERA vs FBANK", "fbank")):
        baseline = next((r for r in results if r.kind == kind), None)
        pairs += [(family, r, baseline) for r in pretrained if baseline is not None]
    budgets = sorted({r.budget for r in pretrained if r.budget is not None}, reverse=True)
    sizes = sorted({r.size_percent for r in pretrained if r.size_percent is not None})
    at = {(r.size_percent, r.budget): r for r in pretrained}
    for size in sizes:
        pairs += [("full vs lower budget", at[size, budgets[0]], at[size, b])
                  for b in budgets[1:] if (size, budgets[0]) in at and (size, b) in at]
    for budget in budgets:
        row = [at[s, budget] for s in sizes if (s, budget) in at]
        pairs += [("neighbouring sizes", small, large) for small, large in zip(row, row[1:])]
    return pairs


def comparisons(results: list[UpstreamResult], items: dict[str, dict[str, list[Items]]]
                ) -> list[dict]:
    """The paired bootstrap test of every pair of `comparison_pairs` on every task both were
    scored on: the difference a - b (fractions), its interval, p-value, whether it is
    significant, and which upstream is better."""
    tests = []
    for family, a, b in comparison_pairs(results):
        for task in TASK_CLASSES:
            name = task.name
            if name not in items.get(a.name, {}) or name not in items.get(b.name, {}):
                continue
            test = paired_difference(items[a.name][name], items[b.name][name])
            gain = test["difference"] if task.higher_is_better else -test["difference"]
            better = None if gain == 0 else (a.name if gain > 0 else b.name)
            tests.append({"family": family, "a": a.name, "b": b.name, "task": name, **test,
                          "better": better})
    return tests


def significance_text() -> str:
    """The paragraph that tells how to read the significance tables."""
    return (f"Paired bootstrap on the same test items ({RESAMPLES} resamples: utterances; "
            "speakers for ASV; and the seeds, where there are several): a cell says which "
            f"upstream of the row is better, by how many points, with the {LEVEL:.0%} "
            "interval of that gain; **bold**: significant (the interval excludes 0), n.s.: "
            "not significant. Each cell is one test at "
            "5 %; among many tests a few 'significant' ones are expected by chance.")


def significance_tables(tests: list[dict]) -> list[str]:
    """One markdown table per family: rows the pairs, columns the tasks."""
    lines = []
    for family in dict.fromkeys(t["family"] for t in tests):
        chosen = [t for t in tests if t["family"] == family]
        tasks = [task.name for task in TASK_CLASSES
                 if any(t["task"] == task.name for t in chosen)]
        lines += [f"### {family}", "", "| A vs B | "
                  + " | ".join(task_class(t).header for t in tasks) + " |",
                  "|" + "---|" * (len(tasks) + 1)]
        for a, b in dict.fromkeys((t["a"], t["b"]) for t in chosen):
            cells = {t["task"]: significance_cell(t) for t in chosen
                     if (t["a"], t["b"]) == (a, b)}
            lines.append(f"| {a} vs {b} | " + " | ".join(cells.get(t, "–") for t in tasks)
                         + " |")
        lines.append("")
    return lines


def significance_cell(test: dict) -> str:
    """'**A** by 12.30 [9.40, 15.10]': the better upstream (A or B of the row), its gain in
    points and the gain's interval."""
    # gain of A over B = sign x (a - b)
    sign = 1 if task_class(test["task"]).higher_is_better else -1
    gain, low, high = (sign * 100 * test[k] + 0.0 for k in ("difference", "low", "high"))
    low, high = min(low, high), max(low, high)
    if test["better"] is None:
        return f"equal [{low:.2f}, {high:.2f}] n.s."
    winner = "A" if test["better"] == test["a"] else "B"
    if winner == "B":
        gain, low, high = -gain + 0.0, -high + 0.0, -low + 0.0  # + 0.0: no "-0.00"
    name = f"**{winner}**" if test["significant"] else winner
    return f"{name} by {gain:.2f} [{low:.2f}, {high:.2f}]" + ("" if test["significant"]
                                                              else " n.s.")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _pyplot():
    # deferred: matplotlib loads only when a report draws its figures
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_valley_curve(results: list[UpstreamResult], path: Path) -> Path | None:
    """ASR WER and ASV EER against model size, one line per compute budget."""
    pretrained = [r for r in results if r.kind == "tera2" and r.size_percent is not None]
    if not pretrained:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (task, label) in zip(axes, [(t, task_class(t).header) for t in ("asr", "asv")]):
        for budget in sorted({r.budget for r in pretrained}, reverse=True):
            points = sorted((r.size_percent, *_value_and_bounds(r, task)) for r in pretrained
                            if r.budget == budget and _finite(r.metrics.get(task)))
            if points:
                xs, ys, lows, highs = zip(*points)
                errors = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
                ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=4,
                            label=f"{budget:g}× budget ({LEVEL:.0%} intervals)")
        baselines = [r for r in results if r.kind != "tera2" and _finite(r.metrics.get(task))]
        for r, style in zip(baselines, [":", "--", "-."] * 3):
            value, low, high = _value_and_bounds(r, task)
            line = ax.axhline(value, linestyle=style, color="grey", label=r.name)
            ax.axhspan(low, high, color=line.get_color(), alpha=0.12)
        ax.set_xscale("log")
        sizes = sorted({r.size_percent for r in pretrained})
        ax.set_xticks(sizes, [f"{s:g}%" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("model size (% of the 100 % model)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Compute-matched scaling: downstream error vs. model size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(results: list[UpstreamResult], path: Path) -> Path | None:
    """Each pre-trained upstream's training loss (validation loss dashed) per update."""
    curves = [r for r in results if r.loss_curve]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in curves:
        train = [(p["update"], p["loss"]) for p in r.loss_curve if _finite(p.get("loss"))]
        valid = [(p["update"], p["valid_loss"]) for p in r.loss_curve
                 if _finite(p.get("valid_loss"))]
        if train:
            (line,) = ax.plot(*zip(*train), label=r.name, alpha=0.8)
            if valid:
                ax.plot(*zip(*valid), marker="o", linestyle="--", color=line.get_color())
    ax.set_xlabel("update")
    ax.set_ylabel("loss (L1 + 10 × feature penalty)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_layer_weights(results: list[UpstreamResult], path: Path) -> Path | None:
    """One heat map per upstream with several layers: rows tasks, columns layers."""
    multi = [r for r in results if any(len(w) > 1 for w in r.layer_weights.values())]
    if not multi:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(multi), 1, figsize=(7, 1.2 + 1.1 * len(multi)), squeeze=False)
    for ax, r in zip(axes[:, 0], multi):
        tasks = [t.name for t in TASK_CLASSES if len(r.layer_weights.get(t.name, [])) > 1]
        width = max(len(r.layer_weights[t]) for t in tasks)
        grid = [r.layer_weights[t] + [math.nan] * (width - len(r.layer_weights[t]))
                for t in tasks]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_yticks(range(len(tasks)), [t.upper() for t in tasks])
        ax.set_xticks(range(width), [f"h{i}" for i in range(width)])
        ax.set_title(r.name, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _value_and_bounds(r: UpstreamResult, task: str) -> tuple[float, float, float]:
    """(value, low, high) in % (the value itself where there is no interval)."""
    value = 100 * r.metrics[task]
    bounds = r.intervals.get(task) or {}
    low, high = bounds.get("low"), bounds.get("high")
    if not (_finite(low) and _finite(high)):
        return value, value, value
    return value, 100 * low, 100 * high


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
