"""The README's main job, `lightning-rlhf pipeline recipes/pipelines/canonical.yaml`, run
whole with `--quick` (a tiny model, a few steps, two seeds): every stage runs through the
commands a user types, and it ends with the table, the JSON summary and the figures."""

import json

import matplotlib.pyplot as plt
import pytest

from lightning_rlhf.cli import main

METHODS = ["DPO", "rejection sampling", "PPO", "GRPO"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("canonical-quick")
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["pipeline", "recipes/pipelines/canonical.yaml", "--quick", "--output-dir", str(out)]) == 0
    return out, printed.getvalue()


def test_the_table_has_a_row_per_method_with_intervals_and_the_proxy_beside_gold(quick_run):
    _, printed = quick_run
    lines = printed.splitlines()
    title = lines.index("4 method(s) against SFT on 8 held-out prompts, mean ± 95% interval over 2 seeds:")
    header, *rows = [line for line in lines[title + 1:] if line.strip() and not line.startswith("wrote")]
    assert header.split()[:3] == ["method", "reward", "proxy"]
    names = [row[: header.index("reward")].strip() for row in rows]
    assert names == ["SFT", "best-of-2 by proxy", "best-of-4 by proxy", *METHODS]
    assert all(" ± " in row for row in rows[3:])  # two seeds: every trained method has an interval


def test_the_summary_holds_every_evaluation_over_both_seeds(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "evaluation.json").read_text())
    assert [e["policy_label"] for e in summary["evaluations"]] == METHODS
    assert summary["cpu_capability"]
    for evaluation in summary["evaluations"]:
        assert evaluation["seeds"] == [0, 1]
        for name in ("policy_mean_reward", "policy_mean_proxy_reward", "win_rate", "kl"):
            figure = evaluation["figures"][name]
            assert figure["n"] == 2 and len(figure["values"]) == 2
        assert [row["n"] for row in evaluation["best_of_n"]["rows"]] == [1, 2, 4]
    # SFT's samples are drawn once per seed and shared: every evaluation sees the same SFT figures
    for figure in ("reference_mean_reward", "reference_mean_proxy_reward", "reference_mean_length"):
        assert len({json.dumps(e["figures"][figure]["values"]) for e in summary["evaluations"]}) == 1
    # what the table calls SFT's proxy reward is the reward model's mean score of SFT's samples
    for seed in (0, 1):
        report = json.loads((out / f"seed{seed}" / "ppo" / "evaluation.json").read_text())
        assert report["proxy_reward"] == str(out / f"seed{seed}" / "reward" / "export")
        assert report["reference"]["mean_proxy_reward"] == summary["evaluations"][0]["figures"]["reference_mean_proxy_reward"]["values"][seed]


def test_the_frontier_figure_has_gold_proxy_and_win_rate_panels(quick_run):
    out, printed = quick_run
    figure = out / "frontier.png"
    assert f"wrote {out / 'evaluation.json'}, {figure}, {out / 'curves.png'}" in printed
    image = plt.imread(figure)
    height, width = image.shape[:2]
    assert width > 3 * height  # three panels side by side
    assert image[..., :3].std() > 0.05  # drawn, not blank


def test_the_online_runs_log_the_gold_reward_beside_the_proxy(quick_run):
    """PPO and GRPO train on the reward model and monitor the labeller's reward of the same
    samples; curves.png draws both over training."""
    from lightning_rlhf.tracking import read_offline_run

    out, _ = quick_run
    for run in ("ppo", "grpo"):
        (log,) = (out / "seed0" / run).rglob("offline-run-*/run-*.wandb")
        assert {"train/objective/scores", "train/monitor/gold"} <= read_offline_run(log).keys()
    assert (out / "curves.png").stat().st_size > 10_000


def test_every_evaluation_report_has_its_figure_beside_it(quick_run):
    out, _ = quick_run
    for seed in (0, 1):
        for run in ("dpo", "rejection-sampling", "ppo", "grpo"):
            assert (out / f"seed{seed}" / run / "evaluation.png").stat().st_size > 10_000


def test_each_fit_logs_to_its_own_wandb_run(quick_run):
    """Lightning's WandbLogger adopts a W&B run left open in the process; the pipeline closes
    each fit's run, so five fits per seed leave five offline runs, not one."""
    out, _ = quick_run
    for seed in (0, 1):
        runs = sorted(path.relative_to(out / f"seed{seed}").parts[0] for path in (out / f"seed{seed}").rglob("offline-run-*/run-*.wandb"))
        assert runs == ["dpo", "grpo", "ppo", "rejection-sampling", "reward"]


def test_plot_puts_runs_on_one_figure(quick_run, tmp_path):
    out, _ = quick_run
    assert main(["plot", str(out), "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "frontier.png").stat().st_size > 10_000 and (tmp_path / "curves.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as error:
        main(["plot", str(out), "--metrics", "train/no_such_metric", "--output-dir", str(tmp_path)])
    assert error.value.code == 2
