"""``bv plot WORKDIR... [--out curves.png]``: training curves of one or several runs on one figure.

One panel each for the training loss, the learning rate and every evaluator metric
(``test/prec@1``, ``val/loss``, ...), read from each run's ``metrics.jsonl``; each run
has its own colour, and the metrics of the params' EMA (``ema/...``) are drawn dashed
beside those of the params. Needs matplotlib (in the ``train`` extra); draws without
a display (the Agg backend).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence

from bv.core import cli
from bv.core.errors import UserError
from bv.core.metrics_log import METRICS_FILE, read_records

__all__ = ["PlotError", "main", "panels", "plot_runs", "read_curves"]

# (step, value) pairs of each metric of a run.
Curves = dict[str, list[tuple[int, float]]]

TRAINING_PANELS = ("training_loss", "lr")


class PlotError(UserError, ValueError):
    """A run that cannot be plotted (no metrics.jsonl, nothing logged) or an unknown metric asked for."""


def read_curves(workdir: str) -> Curves:
    """Every numeric metric of a run's ``metrics.jsonl`` as ``{name: [(step, value), ...]}``."""
    path = workdir if workdir.endswith(".jsonl") else os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        raise PlotError(f"{workdir} has no {METRICS_FILE}: expected a bv training workdir (written by bv train).")
    curves: Curves = {}
    for record in read_records(path):
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for name, value in record.items():
            if name == "step" or isinstance(value, bool):
                continue
            try:
                value = float(value)  # JSON keeps NaN as the string "nan"
            except (TypeError, ValueError):
                continue
            curves.setdefault(name, []).append((step, value))
    if not curves:
        raise PlotError(f"{path} holds no metrics yet.")
    return curves


def _is_eval_metric(name: str) -> bool:
    """Evaluator metrics are ``evaluator/metric`` (``ema/evaluator/metric`` for the EMA)."""
    return "/" in name and not name.startswith("img/")


def panels(runs: Sequence[Curves], wanted: Sequence[str] | None = None) -> list[str]:
    """The panels to draw: the training loss, the learning rate and each evaluator metric (EMA beside its metric)."""
    names = {name for curves in runs for name in curves}
    if wanted:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise PlotError(f"No run logged {', '.join(map(repr, unknown))}; they logged: {', '.join(sorted(names))}.")
        return list(wanted)
    evals = sorted({n.removeprefix("ema/") for n in names if _is_eval_metric(n)})
    return [n for n in TRAINING_PANELS if n in names] + evals


def _labels(workdirs: Sequence[str]) -> list[str]:
    """Each run's folder name, or more of its path where two runs share a name."""
    paths = [os.path.normpath(os.path.abspath(w)) for w in workdirs]
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names):
        common = os.path.commonpath(paths)
        names = [os.path.relpath(p, common) if p != common else os.path.basename(p) for p in paths]
    return names


def plot_runs(workdirs: Sequence[str], out: str, *, metrics: Sequence[str] | None = None, dpi: int = 110) -> str:
    """Draws the runs' curves into ``out`` (png, pdf, svg: by its extension); returns ``out``."""
    from bv.core.extras import require

    require("bv plot", {"matplotlib": "matplotlib"})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not workdirs:
        raise PlotError("Name at least one workdir to plot.")
    runs = [read_curves(w) for w in workdirs]
    names = panels(runs, metrics)
    if not names:
        raise PlotError(f"The runs logged no training loss, learning rate or evaluator metric: {workdirs}.")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names):
        for i, (label, curves) in enumerate(zip(_labels(workdirs), runs)):
            color = colors[i % len(colors)]
            for key, style, suffix in ((name, "-", ""), (f"ema/{name}", "--", " (EMA)")):
                if key in curves:
                    steps, values = zip(*curves[key])
                    marker = "o" if len(steps) < 12 else None
                    ax.plot(steps, values, style, color=color, marker=marker, ms=3, label=label + suffix)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name == "training_loss":
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1 : len(names)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 4), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None, *, prog: str = "bv plot") -> None:
    """Console entry point of ``bv plot``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Draw the training loss, learning rate and eval metrics of one or several runs on one figure.",
    )
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="training workdirs (with metrics.jsonl)")
    parser.add_argument("--out", default="curves.png", help="the image to write (.png, .pdf, .svg); default curves.png")
    parser.add_argument("--metrics", help="comma-separated metrics to draw instead, e.g. training_loss,test/prec@1")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of a .png (default 110)")
    args = parser.parse_args(argv)
    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    with cli.user_errors(prog):
        out = plot_runs(args.workdirs, args.out, metrics=wanted, dpi=args.dpi)
    print(f"Wrote {out}")
