"""``lightning-rlhf plot RUN_DIR...``: several runs on one figure.

A run folder is read for what it holds:

- a pipeline's ``evaluation.json`` (``lightning-rlhf pipeline``): every evaluated method at its
  reward against its KL to the reference, with its interval over seeds, on one frontier
  figure (each method named ``<folder>: <method>`` when several folders are given);
- W&B offline runs (``wandb/offline-run-*/run-*.wandb`` anywhere below it, as a recipe's
  ``WandbLogger`` writes them): training curves, a panel per metric, a line per run.

Run folders of both kinds may be mixed; each kind gives its own figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Metrics drawn by default, in this order, when the runs logged them (``*`` as in a shell):
# what a reader of an alignment run looks at first. ``train/objective/scores`` is an online
# run's mean reward of its samples (the proxy, when it trains against a reward model),
# ``train/monitor/*`` what a monitored reward (``monitor: {gold: gold}``) gave the same samples.
DEFAULT_METRICS = (
    "train/objective/scores", "train/monitor/*", "val/objective/scores", "train/loss", "val/loss",
    "train/rewards/accuracies", "val/accuracy", "train/objective/kl", "train/kl", "train/reward/*",
)
MAX_DEFAULT_PANELS = 6


def find_wandb_runs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("offline-run-*/run-*.wandb"))


def training_curves(runs: list[tuple[str, object]], metrics: list[str] | None) -> dict[str, list[tuple[str, list[float], list[float]]]]:
    """metric -> [(run label, steps, values)] from offline runs (``tracking.OfflineRun``); the
    step is Lightning's ``trainer/global_step`` where it was logged, else W&B's row index."""
    logged = set().union(*(run.keys() for _, run in runs)) if runs else set()
    if metrics is None:
        from fnmatch import fnmatch

        metrics = list(dict.fromkeys(k for pattern in DEFAULT_METRICS for k in sorted(logged) if fnmatch(k, pattern)))
        metrics = metrics[:MAX_DEFAULT_PANELS]
    curves: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for metric in metrics:
        for label, run in runs:
            points = [(row.get("trainer/global_step", i), row[metric]) for i, row in enumerate(run.history)
                      if isinstance(row.get(metric), (int, float))]
            if points:
                curves.setdefault(metric, []).append((label, [float(s) for s, _ in points], [float(v) for _, v in points]))
    return curves


def monitored_curves(folder: Path, path: Path) -> Path | None:
    """The online runs below ``folder`` that monitored a reward: the reward they trained on
    (``train/objective/scores``) and each monitored one over training, a panel each, a line
    per run (``seed0/ppo``, ...); None when no run monitored one."""
    from lightning_rlhf.plots import metric_panels
    from lightning_rlhf.tracking import read_offline_run

    runs = []
    for run_file in find_wandb_runs(folder):
        run = read_offline_run(run_file, timeout=10)
        if any(key.startswith("train/monitor/") for key in run.keys()):
            runs.append((_run_label(folder, run_file, run, False), run))
    if not runs:
        return None
    monitored = sorted({key for _, run in runs for key in run.keys() if key.startswith("train/monitor/")})
    curves = training_curves(runs, ["train/objective/scores", *monitored])
    return metric_panels(curves, path, title="The reward trained on (train/objective/scores) and the monitored one, over training")


def _run_label(folder: Path, run_file: Path, run, several_folders: bool) -> str:
    """The run's folder below the given one (``seed0/ppo``), or its W&B name when the run is
    the folder itself; prefixed by the folder's name when several are drawn."""
    inside = run_file.parent.parent.parent.relative_to(folder)  # <run folder>/wandb/offline-run-*/run-*.wandb
    label = run.name if str(inside) == "." else str(inside)
    return f"{folder.name}: {label}" if several_folders else label


def plot_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-rlhf plot", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("runs", nargs="+", help="run folders: a pipeline's output folder, or a training run's folder")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                        help=f"training metrics to draw (default: those of {', '.join(DEFAULT_METRICS[:4])}, ... the runs logged)")
    parser.add_argument("--output-dir", default=".", help="where frontier.png and curves.png are written")
    args = parser.parse_args(argv)
    from lightning_rlhf.cpu import cpu_capability

    folders = [Path(r) for r in args.runs]
    for folder in folders:
        if not folder.is_dir():
            parser.error(f"{folder}: not a folder")
    several = len(folders) > 1
    written = []
    summaries = []
    for folder in folders:
        if (folder / "evaluation.json").is_file():
            summaries += _method_summaries(folder, several)
    if summaries:
        from lightning_rlhf.pipeline_report import frontier_figure

        written.append(frontier_figure(summaries, Path(args.output_dir) / "frontier.png",
                                       note=f"{', '.join(str(f) for f in folders)}; drawn on {cpu_capability()}"))
    from lightning_rlhf.tracking import read_offline_run

    runs = []
    for folder in folders:
        for run_file in find_wandb_runs(folder):
            run = read_offline_run(run_file, timeout=10)
            runs.append((_run_label(folder, run_file, run, several), run))
    curves = training_curves(runs, args.metrics)
    if curves:
        from lightning_rlhf.plots import metric_panels

        written.append(metric_panels(curves, Path(args.output_dir) / "curves.png",
                                     title=f"Training curves of {len(runs)} run{'s' if len(runs) > 1 else ''}"))
    elif args.metrics and runs:
        parser.error(f"no run logged {', '.join(args.metrics)}")
    if not written:
        parser.error("found neither a pipeline's evaluation.json nor W&B offline runs in " + ", ".join(map(str, folders)))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _method_summaries(folder: Path, several: bool) -> list[dict]:
    import json

    data = json.loads((folder / "evaluation.json").read_text())
    summaries = data.get("evaluations") or [data]
    if several:
        summaries = [s | {"policy_label": f"{folder.name}: {s['policy_label']}"} for s in summaries]
    return summaries
