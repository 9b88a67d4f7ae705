"""The README's toy-world tables are pipelines: they parse and check (every recipe, stage option
and seed) before anything runs, and per-seed outputs never collide."""

import json
import sys
from pathlib import Path

import pytest

from lightning_rlhf.pipeline import parse_pipeline
from lightning_rlhf.stats import mean_interval

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import toyworld_tables  # noqa: E402


@pytest.mark.parametrize("table", ["objectives", "self-training", "rlvr"])
def test_table_pipelines_check_and_write_one_report_per_method_and_seed(table):
    config = {"objectives": lambda: toyworld_tables.objectives_pipeline("out", [0, 1, 2], list(toyworld_tables.OBJECTIVES)),
              "self-training": lambda: toyworld_tables.self_training_pipeline("out", [0, 1, 2], "2,4"),
              "rlvr": lambda: toyworld_tables.rlvr_pipeline("out", [0, 1, 2], list(toyworld_tables.RLVR_METHODS))}[table]()
    pipeline = parse_pipeline(config, table)
    outputs = [stage.for_seed(seed).options["output"] for stage in pipeline.stages if stage.kind == "evaluate" for seed in pipeline.seeds]
    assert len(outputs) == len(set(outputs))
    labels = [stage.options["policy_label"] for stage in pipeline.stages if stage.kind == "evaluate"]
    assert len(labels) == len(set(labels))
    if table == "objectives":
        assert labels == list(toyworld_tables.OBJECTIVES)
    if table == "rlvr":
        assert labels == list(toyworld_tables.RLVR_METHODS)


def test_table_cells_are_means_with_intervals():
    assert toyworld_tables.cell([0.7, 0.8, 0.9], ".1f", percent=True) == "80.0% ± 24.8%"
    assert toyworld_tables.markdown(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def _results(path: Path, values: dict[str, list[float]]) -> str:
    """A pipeline's evaluation.json with the given per-seed values for every figure."""
    figures = {name: {**mean_interval(vs).as_dict(), "values": vs} for name, vs in values.items()}
    path.write_text(json.dumps({"policy_label": "DPO", "figures": figures}))
    return str(path)


def test_pooled_marks_a_mean_outside_the_rerun_interval(tmp_path):
    names = list(toyworld_tables.FIGURES)
    steady = _results(tmp_path / "a.json", {name: [0.70, 0.71, 0.72] for name in names})
    close = _results(tmp_path / "b.json", {name: [0.69, 0.71, 0.73] for name in names})
    far = _results(tmp_path / "c.json", {name: [0.70, 0.71, 0.72] for name in names} | {"kl": [9.0, 9.1, 9.2]})
    assert toyworld_tables.pooled([steady, close]).endswith("0 input mean(s) outside the pooled rerun interval")
    report = toyworld_tables.pooled([steady, steady, steady, far])
    kl_line = next(line for line in report.splitlines() if line.strip().startswith("kl "))
    assert "(outside)" in kl_line and report.endswith("1 input mean(s) outside the pooled rerun interval")


def test_pooled_figure_draws_every_method(tmp_path):
    from PIL import Image

    names = list(toyworld_tables.FIGURES)
    a = _results(tmp_path / "a.json", {name: [0.70, 0.71, 0.72] for name in names} | {"kl": [3.0, 4.0, 5.0]})
    b = _results(tmp_path / "b.json", {name: [0.69, 0.71, 0.73] for name in names} | {"kl": [3.5, 4.5, 5.5]})
    figure = toyworld_tables.pooled_figure([a, b], str(tmp_path / "fig.png"))
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size == (900, 600)


def _rlvr_results(path: Path, methods: list[str], accuracy: float) -> str:
    """An rlvr table's JSON for these methods over seeds 0-2: every method at ``accuracy``
    (+0.01 per seed), SFT at 0.45, each fit 100 s."""
    pipeline = parse_pipeline(toyworld_tables.rlvr_pipeline(str(path.parent), [0, 1, 2], methods), "test")
    stages = [{"stage": "fit", "number": s.number, "seed": seed, "seconds": 100.0} for s in pipeline.stages if s.kind == "fit"
              for seed in (0, 1, 2)]
    reports = [{"reference": {"mean_reward": 0.45, "mean_length": 24.0}} for _ in range(3)]
    figure = lambda values: {**mean_interval(values).as_dict(), "values": values}  # noqa: E731
    summaries = {m: {"figures": {"kl": figure([0.5, 0.6, 0.7]), "policy_mean_reward": figure([accuracy, accuracy + 0.01, accuracy + 0.02]),
                                 "policy_mean_length": figure([24.0, 24.0, 24.0])}, "reports": reports} for m in methods}
    path.write_text(json.dumps({"cpu_capability": "AVX2", "seeds": [0, 1, 2], "summaries": summaries, "stages": stages}))
    return str(path)


def test_rlvr_report_joins_methods_run_apart(tmp_path):
    a = _rlvr_results(tmp_path / "a.json", ["grpo", "dapo"], 0.70)
    b = _rlvr_results(tmp_path / "b.json", ["rloo"], 0.60)
    report = toyworld_tables.rlvr_report([a, b], str(tmp_path / "fig.png"))
    rows = [line for line in report.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| SFT (`builtin:arithmetic`)", "| grpo", "| dapo", "| rloo"]
    assert "71.0% ± 2.5%" in rows[1] and "61.0% ± 2.5%" in rows[3] and rows[3].endswith("100 s |")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
