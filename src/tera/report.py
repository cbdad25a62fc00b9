"""Tables and plots of a study: the SUPERB-style table, the valley curve, pre-training loss
curves and the learned layer weights, written as `report.md`, `report.json` and PNG files."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Column order, metric key, header, whether higher is better, shown as percent.
TASKS = (
    ("pr", "PR PER %", False),
    ("ks", "KS Acc %", True),
    ("sid", "SID Acc %", True),
    ("asr", "ASR WER %", False),
    ("asv", "ASV EER %", False),
)


@dataclass
class UpstreamResult:
    """One row of the study: an upstream and what it scored.

    metrics hold fractions (0.25 = 25 %); budget is the compute fraction of a pre-trained
    TERA (None for baselines); size_percent is the % size of the study's 100 % model.
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
    layer_weights: dict[str, list[float]] = field(default_factory=dict)
    loss_curve: list[dict[str, float]] = field(default_factory=list)


def write_report(results: list[UpstreamResult], out_dir: Path, title: str,
                 notes: list[str] | None = None) -> Path:
    """Write report.md, report.json and the figures into `out_dir`; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "valley": plot_valley_curve(results, out_dir / "valley_curve.png"),
        "loss": plot_loss_curves(results, out_dir / "pretrain_loss.png"),
        "weights": plot_layer_weights(results, out_dir / "layer_weights.png"),
    }
    payload = {"title": title, "notes": notes or [],
               "upstreams": [asdict(r) for r in results],
               "figures": {k: v.name for k, v in figures.items() if v is not None}}
    (out_dir / "report.json").write_text(json.dumps(payload, indent=2))

    lines = [f"# {title}", "", superb_table(results), ""]
    lines += [f"- {note}" for note in notes or []]
    captions = {
        "valley": "Valley curve: downstream error against model size, one line per budget",
        "loss": "Pre-training loss (train, and validation where logged)",
        "weights": "Learned SUPERB layer weights per task",
    }
    for key, path in figures.items():
        if path is not None:
            lines += ["", f"## {captions[key]}", "", f"![{captions[key]}]({path.name})"]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def superb_table(results: list[UpstreamResult]) -> str:
    """Markdown table: rows upstreams, columns the five tasks, size, FLOPs and wall time."""
    header = ["upstream"] + [h for _, h, _ in TASKS] + ["params", "pre-train FLOPs", "wall"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.name]
        for task, _, _ in TASKS:
            value = r.metrics.get(task)
            cells.append("–" if value is None else f"{100 * value:.2f}")
        cells.append(f"{r.parameters / 1e6:.2f} M" if r.parameters else "–")
        cells.append(f"{r.pretrain_flops:.2e}" if r.pretrain_flops else "–")
        cells.append(_duration(r.pretrain_wall_s) if r.pretrain_wall_s else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _pyplot():
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
    for ax, (task, label) in zip(axes, [("asr", "ASR WER %"), ("asv", "ASV EER %")]):
        for budget in sorted({r.budget for r in pretrained}, reverse=True):
            points = sorted((r.size_percent, 100 * r.metrics[task]) for r in pretrained
                            if r.budget == budget and _finite(r.metrics.get(task)))
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=f"{budget:g}× budget")
        baselines = [r for r in results if r.kind != "tera2" and _finite(r.metrics.get(task))]
        for r, style in zip(baselines, [":", "--", "-."] * 3):
            ax.axhline(100 * r.metrics[task], linestyle=style, color="grey", label=r.name)
        ax.set_xscale("log")
        sizes = sorted({r.size_percent for r in pretrained})
        ax.set_xticks(sizes, [f"{s:g}%" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("model size (% of the 100 % model)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Compute-matched scaling: downstream error vs. model size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(results: list[UpstreamResult], path: Path) -> Path | None:
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
        tasks = [t for t, _, _ in TASKS if len(r.layer_weights.get(t, [])) > 1]
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


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
