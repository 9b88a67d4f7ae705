"""Figures of compared results: what each method bought (gold reward) for what it cost (KL
to the SFT policy), each point a mean with its interval over seeds.

Drawn with matplotlib's file backend (no display needed); every figure says which CPU
kernel path its numbers came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: a CI machine has no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


@dataclass(frozen=True)
class Point:
    """One method: mean and interval half-width of its KL and its reward."""

    label: str
    kl: float
    reward: float
    kl_err: float = 0.0
    reward_err: float = 0.0
    seeds: tuple[tuple[float, float], ...] = ()
    """each seed's own (kl, reward), drawn faintly beside the mean: three seeds' interval
    can reach below 0 nats where no seed does"""


def reward_vs_kl(
    points: Sequence[Point],
    path: str | Path,
    title: str,
    note: str = "",
    curve: tuple[str, Sequence[float], Sequence[float], Sequence[float]] | None = None,
    baseline: Point | None = None,
    ylabel: str = "mean gold reward",
    percent: bool = False,
    legend: str = "center right",
) -> Path:
    """Write a reward-against-KL figure to ``path`` (PNG or SVG by suffix).

    ``curve``: ``(label, kls, rewards, reward_errs)``, drawn as a line with a band (best-of-n
    at its analytic KL); ``baseline``: the reference policy, drawn at KL 0 as a dashed line
    across the figure with its band. ``percent``: rewards are shares (accuracy), shown in %.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    _draw_reward_vs_kl(ax, points, curve, baseline, ylabel, percent)
    return _save(fig, ax, path, title, note, legend, ncol=2)


@dataclass(frozen=True)
class Bar:
    """One bar: a mean, its interval half-width, each seed's value, and whether it is a
    baseline (drawn grey) rather than a method (drawn in its colour of the other panels)."""

    label: str
    value: float
    err: float = 0.0
    seeds: tuple[float, ...] = ()
    baseline: bool = False


def reward_panels(panels: Sequence[tuple], path: str | Path, title: str, note: str = "",
                  bars: tuple[str, Sequence[Bar]] | None = None) -> Path:
    """Reward-against-KL panels side by side, one per ``(points, baseline, curve, ylabel)``
    (see :func:`reward_vs_kl`): the gold reward and a proxy's, say, for the same methods;
    ``bars``: ``(ylabel, bars)``, a last panel of shares (win rates) with a line at 50%."""
    count = len(panels) + (bars is not None)
    fig, axes = plt.subplots(1, count, figsize=(6.2 * count, 5.0), dpi=110, squeeze=False)
    for ax, (points, baseline, curve, ylabel) in zip(axes[0], panels):
        _draw_reward_vs_kl(ax, points, curve, baseline, ylabel, percent=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if bars is not None:
        _draw_bars(axes[0][-1], *bars)
    fig.suptitle(title, fontsize=11)
    return _write(fig, path, note)


def _draw_bars(ax, ylabel: str, bars: Sequence[Bar]) -> None:
    colors = plt.get_cmap("tab10")
    methods = 0
    for i, bar in enumerate(bars):
        color = "0.6" if bar.baseline else colors(methods % 10)
        methods += not bar.baseline
        ax.bar(i, bar.value, yerr=bar.err, color=color, alpha=0.85, capsize=3)
        if bar.seeds:
            ax.scatter([i] * len(bar.seeds), bar.seeds, s=14, marker="x", color="black", alpha=0.6, zorder=3)
    ax.axhline(0.5, color="0.45", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(bars)), [bar.label for bar in bars], rotation=30, ha="right", fontsize=8)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")


def _draw_reward_vs_kl(ax, points: Sequence[Point], curve, baseline: Point | None, ylabel: str, percent: bool) -> None:
    if baseline is not None:
        ax.axhline(baseline.reward, color="0.45", linestyle="--", linewidth=1, label=baseline.label)
        ax.axhspan(baseline.reward - baseline.reward_err, baseline.reward + baseline.reward_err, color="0.85", alpha=0.5)
    if curve is not None:
        label, kls, rewards, errs = curve
        low = [r - e for r, e in zip(rewards, errs)]
        high = [r + e for r, e in zip(rewards, errs)]
        ax.plot(kls, rewards, marker="s", markersize=4, color="tab:gray", label=label)
        ax.fill_between(kls, low, high, color="tab:gray", alpha=0.2)
    colors = plt.get_cmap("tab10")
    for i, point in enumerate(points):
        ax.errorbar(point.kl, point.reward, xerr=point.kl_err, yerr=point.reward_err, fmt="o", capsize=3,
                    color=colors(i % 10), label=point.label)
        if point.seeds:
            ax.scatter([kl for kl, _ in point.seeds], [r for _, r in point.seeds], s=14, marker="x", color=colors(i % 10), alpha=0.6)
    ax.set_xlabel("KL to the SFT policy (nats per completion)")
    ax.set_ylabel(ylabel)
    if percent:
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))


def _write(fig, path: str | Path, note: str = "", bottom: float = 0.03) -> Path:
    """The note (kernel path, seeds) under the axes, then the file; the figure is closed."""
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _save(fig, ax, path: str | Path, title: str, note: str, legend: str, ncol: int = 1) -> Path:
    """Title, grid, legend and the note (kernel path, seeds) under the axes; then the file."""
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend, ncol=ncol)
    return _write(fig, path, note)


@dataclass(frozen=True)
class Curve:
    """One selector of best-of-n: its mean (and interval half-width) at each n."""

    label: str
    ns: Sequence[int]
    values: Sequence[float]
    errs: Sequence[float]


def accuracy_vs_n(curves: Sequence[Curve], path: str | Path, title: str, note: str = "", ylabel: str = "held-out accuracy",
                  xlabel: str = "n (samples per prompt, the selector picks one)", log_x: bool = True) -> Path:
    """Write accuracy against n (a line with an interval band per curve, accuracy in %; n on
    a log-2 axis unless ``log_x`` is off) to ``path``: best-of-n by selector, or accuracy
    against sampled completions by method."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, curve in enumerate(curves):
        low = [v - e for v, e in zip(curve.values, curve.errs)]
        high = [v + e for v, e in zip(curve.values, curve.errs)]
        ax.plot(curve.ns, curve.values, marker="o", markersize=4, color=colors(i % 10), label=curve.label)
        ax.fill_between(curve.ns, low, high, color=colors(i % 10), alpha=0.15)
    if log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xticks(sorted({n for c in curves for n in c.ns}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    return _save(fig, ax, path, title, note, "upper left")


def metric_panels(curves: dict[str, Sequence[tuple[str, Sequence[float], Sequence[float]]]], path: str | Path, title: str) -> Path:
    """A panel per metric (``{metric: [(label, steps, values), ...]}``), a line per run; the
    same run keeps its colour in every panel."""
    labels = list(dict.fromkeys(label for lines in curves.values() for label, _, _ in lines))
    colors = plt.get_cmap("tab10")
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows + 0.6), dpi=110, squeeze=False)
    for ax, (metric, lines) in zip(axes.flat, curves.items()):
        for label, steps, values in lines:
            ax.plot(steps, values, linewidth=1.2, marker="." if len(steps) < 30 else None, color=colors(labels.index(label) % 10), label=label)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step (trainer/global_step as logged)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colors(i % 10), label=label) for i, label in enumerate(labels)]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return _write(fig, path, bottom=0.04 + 0.03 * ((len(labels) - 1) // 4))
