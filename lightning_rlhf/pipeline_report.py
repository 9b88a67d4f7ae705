"""What a pipeline ends with: its evaluations summarised over seeds, one table and one figure.

Each evaluate stage compares one method with the reference (the SFT policy) on the same
held-out prompts; over several seeds each figure becomes a mean with its 95% t-interval.
The table has a row per method: the reference, best-of-n from the reference (when an
evaluation asked for it), then each evaluated policy. The figure puts every method at its
gold reward against its KL to the reference, best-of-n as a curve at its analytic KL, and,
when the evaluations scored a proxy reward too (the reward model the policies were trained
against), a second panel with the proxy: a method whose proxy reward climbs while its
gold reward does not is over-optimising the reward model (Gao et al. 2022).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_rlhf.stats import mean_interval


def _proxy(side: str):
    return lambda report: report[side].get("mean_proxy_reward")


# The figures of a summary: (key, how to read it from one report); None where a report lacks it.
FIGURES = {
    "reference_mean_reward": lambda report: report["reference"]["mean_reward"],
    "policy_mean_reward": lambda report: report["policy"]["mean_reward"],
    "reference_mean_proxy_reward": _proxy("reference"),
    "policy_mean_proxy_reward": _proxy("policy"),
    "win_rate": lambda report: report["win_rate"],
    "kl": lambda report: report["kl"],
    "reference_mean_length": lambda report: report["reference"]["mean_length"],
    "policy_mean_length": lambda report: report["policy"]["mean_length"],
    "judge_win_rate": lambda report: (report.get("judge") or {}).get("win_rate"),
}
BEST_OF_N_FIGURES = ("mean_reward", "win_rate", "mean_proxy_reward")


def _interval(values: list) -> dict | None:
    return None if any(v is None for v in values) else mean_interval(values).as_dict() | {"values": values}


def summarize_reports(reports: list[dict], seeds: list, reference_label: str, policy_label: str) -> dict:
    """One evaluation's reports (one per seed) as means with 95% intervals, beside the reports."""
    summary = {
        "seeds": seeds,
        "prompts": reports[0]["prompts"],
        "reward": reports[0].get("reward"),
        "proxy_reward": reports[0].get("proxy_reward"),
        "reference_label": reference_label,
        "policy_label": policy_label,
        "figures": {name: _interval([read(report) for report in reports]) for name, read in FIGURES.items()},
        "reports": reports,
    }
    if all(report.get("best_of_n") for report in reports):
        per_seed = [report["best_of_n"]["rows"] for report in reports]
        summary["best_of_n"] = {
            "selection_reward": reports[0]["best_of_n"].get("selection_reward"),
            "rows": [{"n": row["n"], "kl": row["kl"]} | {name: _interval([rows[i].get(name) for rows in per_seed]) for name in BEST_OF_N_FIGURES}
                     for i, row in enumerate(per_seed[0])],
        }
    return summary


def format_figure(figure: dict | None, spec: str, percent: bool = False) -> str:
    """``mean ± half-width`` of a summary figure (``Interval.as_dict()``), or the mean alone for one seed."""
    if figure is None:
        return "n/a"
    scale, suffix = (100.0, "%") if percent else (1.0, "")
    text = f"{figure['mean'] * scale:{spec}}{suffix}"
    return text if figure["n"] < 2 else f"{text} ± {figure['half_width'] * scale:{spec.lstrip('+')}}{suffix}"


def clock(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def stage_times(records: list[dict]) -> list[str]:
    lines = ["stage        seed  wall       user cpu"]
    lines += [f"{r['stage']:<12} {'' if r['seed'] is None else r['seed']:>4}  {clock(r['seconds']):>9}  {clock(r['user_cpu_seconds']):>9}"
              for r in records]
    lines.append(f"{'total':<12} {'':>4}  {clock(wall_seconds(records)):>9}  {clock(sum(r['user_cpu_seconds'] for r in records)):>9}")
    return lines


def wall_seconds(records: list[dict]) -> float:
    """From the first stage's start to the last one's end: the sum of the stages' times
    when they ran one after another, less when seeds ran side by side."""
    if not records or any("started_at" not in r for r in records):
        return sum(r["seconds"] for r in records)
    return max(r["started_at"] + r["seconds"] for r in records) - min(r["started_at"] for r in records)


def method_table(summaries: Sequence[dict]) -> list[str]:
    """A row per method: the reference, best-of-n from it (from the first evaluation that
    has it), then each evaluated policy; a column per figure the evaluations report."""
    first = summaries[0]
    before = first["reference_label"]
    gold = "gold reward" if first["reward"] == "gold" else "reward"
    proxy = any(s["figures"].get("policy_mean_proxy_reward") for s in summaries)
    judge = any(s["figures"].get("judge_win_rate") for s in summaries)
    header = ["method", gold, *(["proxy reward"] if proxy else []), f"win rate vs {before}",
              *([f"judge's win rate vs {before}"] if judge else []), "KL (nats)", "length (tokens)"]

    def row(name, reward, proxy_reward, win, judge_win, kl, length):
        return [name, reward, *([proxy_reward] if proxy else []), win, *([judge_win] if judge else []), kl, length]

    f = first["figures"]
    rows = [row(before, format_figure(f.get("reference_mean_reward"), "+.3f"), format_figure(f.get("reference_mean_proxy_reward"), "+.3f"),
                "50.0%", "50.0%", "0", format_figure(f.get("reference_mean_length"), ".1f"))]
    best = next((s["best_of_n"] for s in summaries if s.get("best_of_n")), None)
    if best:
        selection = best.get("selection_reward")
        picked_by = f" by {'proxy' if selection == first.get('proxy_reward') else reward_name(selection)}" if selection else ""
        rows += [row(f"best-of-{r['n']}{picked_by}", format_figure(r["mean_reward"], "+.3f"), format_figure(r["mean_proxy_reward"], "+.3f"),
                     format_figure(r["win_rate"], ".1f", percent=True), "-", f"{r['kl']:.2f}", "-") for r in best["rows"] if r["n"] > 1]
    for s in summaries:
        f = s["figures"]
        rows.append(row(s["policy_label"], format_figure(f.get("policy_mean_reward"), "+.3f"), format_figure(f.get("policy_mean_proxy_reward"), "+.3f"),
                        format_figure(f.get("win_rate"), ".1f", percent=True), format_figure(f.get("judge_win_rate"), ".1f", percent=True),
                        format_figure(f.get("kl"), ".2f"), format_figure(f.get("policy_mean_length"), ".1f")))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    seeds = first["seeds"]
    over = f", mean ± 95% interval over {len(seeds)} seeds" if len(seeds) > 1 else ""
    lines = [f"{len(summaries)} method(s) against {before} on {first['prompts']} held-out prompts{over}:"]
    return lines + ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def reward_name(spec: str) -> str:
    """A reward source's spec, short enough for a table cell: a directory is a reward
    model, a function its name."""
    if Path(spec).is_dir():
        return "reward model"
    if "/" in spec:
        return Path(spec).name
    return spec.rsplit(".", 1)[-1] if "." in spec and not spec.endswith((".yaml", ".json")) else spec


def final_table(records: list[dict], summaries: dict | list[dict] | None) -> str:
    """Stage times, then the method table of the evaluations."""
    lines = stage_times(records)
    if isinstance(summaries, dict):
        summaries = [summaries]
    if summaries:
        lines += ["", *method_table(summaries)]
    return "\n".join(lines)


def frontier_figure(summaries: Sequence[dict], path: str | Path, note: str = "") -> Path:
    """Every method's gold reward against its KL to the reference (best-of-n as a curve), and
    the proxy reward beside it when the evaluations scored one; a PNG at ``path``."""
    from lightning_rlhf.plots import Bar, Point, reward_panels

    first = summaries[0]
    panels = [("policy_mean_reward", "reference_mean_reward", "mean_reward",
               "mean gold reward" if first["reward"] == "gold" else "mean reward")]
    if any(s["figures"].get("policy_mean_proxy_reward") for s in summaries):
        panels.append(("policy_mean_proxy_reward", "reference_mean_proxy_reward", "mean_proxy_reward",
                       f"mean proxy reward ({reward_name(first.get('proxy_reward'))})"))
    best = next((s["best_of_n"] for s in summaries if s.get("best_of_n")), None)
    drawn = []
    for policy_key, reference_key, best_key, ylabel in panels:
        points = []
        for s in summaries:
            kl, reward = s["figures"].get("kl"), s["figures"].get(policy_key)
            if kl is None or reward is None:
                continue
            seeds = tuple(zip(kl["values"], reward["values"]))
            points.append(Point(s["policy_label"], kl["mean"], reward["mean"], kl["half_width"], reward["half_width"], seeds))
        reference = first["figures"].get(reference_key)
        baseline = Point(first["reference_label"], 0.0, reference["mean"], reward_err=reference["half_width"])
        curve = None
        if best and all(r.get(best_key) for r in best["rows"]):
            rows = best["rows"]
            label = f"best-of-n from {first['reference_label']} (n = {', '.join(str(r['n']) for r in rows)})"
            curve = (label, [r["kl"] for r in rows], [r[best_key]["mean"] for r in rows], [r[best_key]["half_width"] for r in rows])
        drawn.append((points, baseline, curve, ylabel))
    bars = [Bar(f"best-of-{r['n']}", r["win_rate"]["mean"], r["win_rate"]["half_width"], tuple(r["win_rate"]["values"]), baseline=True)
            for r in (best["rows"] if best else []) if r["n"] > 1]
    for s in summaries:
        if (win := s["figures"].get("win_rate")) is not None:
            bars.append(Bar(s["policy_label"], win["mean"], win["half_width"], tuple(win["values"])))
    seeds = len(first["seeds"])
    title = f"What each method bought for its KL: {first['prompts']} held-out prompts, {seeds} seed{'s' if seeds > 1 else ''}"
    return reward_panels(drawn, path, title, note, bars=(f"win rate vs {first['reference_label']} ({reward_name(first['reward'] or 'reward')})", bars))
