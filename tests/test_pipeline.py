"""Pipeline files: the shipped one parses and checks; mistakes are clear errors before any stage runs."""

import json

import pytest

from lightning_rlhf.pipeline import (
    PipelineError,
    load_pipeline,
    option_argv,
    parse_pipeline,
    run_pipeline,
    summarize_evaluations,
)
from lightning_rlhf.pipeline_report import final_table

GOOD_LABEL = {"policy": "builtin:tiny-llama", "prompts": "{output_dir}/p.jsonl", "reward": "gold", "output": "{output_dir}/pairs.jsonl"}


def test_the_toy_pipeline_parses_and_checks():
    pipeline = load_pipeline("recipes/pipelines/toy.yaml")
    assert [s.kind for s in pipeline.stages] == ["toy-prompts", "build", "label", "fit", "evaluate"]
    assert len(pipeline.seeds) >= 3
    label = pipeline.stages[2]
    assert not pipeline.stages[0].seeded and all(stage.seeded for stage in pipeline.stages[1:])  # a world per seed
    assert pipeline.stages[1].for_seed(2).options["model"] == "builtin:toyworld-seed2"
    # {output_dir} substituted when read, {seed} per run
    assert label.for_seed(3).options["output"] == str(pipeline.output_dir / "seed3" / "preferences.jsonl")
    assert label.for_seed(3).options["seed"] == "3"


def test_unknown_stage_names_the_stage_and_lists_the_valid_ones():
    with pytest.raises(PipelineError, match=r"stage 2: unknown stage 'lable'; stages are: build, toy-prompts, label, fit, evaluate"):
        parse_pipeline({"output_dir": "out", "stages": [{"build": {"model": "builtin:tiny-llama"}}, {"lable": GOOD_LABEL}]})


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"label": {**GOOD_LABEL, "kk": 4}}], r"stage 1 \(label\): unrecognized arguments: --kk 4"),
        ([{"label": {"policy": "x"}}], r"stage 1 \(label\): the following arguments are required"),
        ([{"fit": {"config": "recipes/nope.yaml"}}], r"stage 1 \(fit\): recipe 'recipes/nope.yaml' does not exist"),
        ([{"fit": {"config": "recipes/dpo/tiny.yaml", "args": ["--model.algorithm.betta=0.2"]}}],
         r"stage 1 \(fit\): model.algorithm: Option 'betta' is not accepted"),
        ([{"label": {**GOOD_LABEL, "k": "{kk}"}}], r"unknown variable\(s\) \['\{kk\}'\]; 'vars' defines: none"),
        ([{"build": {"model": "x"}, "fit": {}}], r"stage 1 must be a one-key mapping"),
        ([], r"'stages' must be a non-empty list"),
        ([{"label": {**GOOD_LABEL, "k": "{seed}x"}}], r"stage 1 \(label\): argument --k: invalid int value: '0x'"),
        ([{"evaluate": {"policy": "p", "reference": "r", "prompts": "p.jsonl", "reward": "gold", "seed": "{seed}", "output": "{output_dir}/evaluation.json"}}],
         r"a seeded evaluation writes one report per seed"),
    ],
)
def test_bad_stages_are_errors(stages, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline({"output_dir": "out", "stages": stages})


@pytest.mark.parametrize("seeds", [[], [1, 1], ["a"], 3])
def test_bad_seeds_are_errors(seeds):
    with pytest.raises(PipelineError, match="'seeds'"):
        parse_pipeline({"output_dir": "out", "seeds": seeds, "stages": [{"build": {"model": "x"}}]})


def test_seeded_stages_repeat_per_seed_and_the_table_gives_intervals(tmp_path, monkeypatch):
    """Consecutive seeded stages run as a block once per seed; the others once. The table's
    figures are means with 95% t-intervals over the seeds' reports."""
    from lightning_rlhf import pipeline as module

    ran = []
    win_rates = {0: 0.70, 1: 0.80, 2: 0.90}  # mean 0.8, s = 0.1, t(2) = 4.303: ± 0.248

    def fake_evaluate(stage, pipeline):
        seed = int(stage.options["seed"])
        ran.append(("evaluate", seed))
        report = {"prompts": 10, "reward": "gold", "win_rate": win_rates[seed], "kl": 1.0 + seed,
                  "reference": {"mean_reward": 0.0, "mean_length": 10.0},
                  "policy": {"mean_reward": 0.5, "mean_length": 12.0}}
        path = tmp_path / f"seed{seed}" / "evaluation.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report))
        return "ok"

    def fake_label(stage, pipeline):
        ran.append(("label", int(stage.options["seed"])))
        return "ok"

    monkeypatch.setitem(module.STAGES, "label", (module.STAGES["label"][0], fake_label))
    monkeypatch.setitem(module.STAGES, "evaluate", (module.STAGES["evaluate"][0], fake_evaluate))
    monkeypatch.setitem(module.STAGES, "toy-prompts", (module.STAGES["toy-prompts"][0], lambda stage, p: ran.append(("prompts",)) or "ok"))
    pipeline = parse_pipeline({
        "output_dir": str(tmp_path), "seeds": [0, 1, 2],
        "stages": [
            {"toy-prompts": {"train": 1, "heldout": 1}},
            {"label": {**GOOD_LABEL, "seed": "{seed}"}},
            {"evaluate": {"policy": "p", "reference": "r", "prompts": "p.jsonl", "reward": "gold", "seed": "{seed}",
                          "output": "{output_dir}/seed{seed}/evaluation.json", "policy_label": "DPO", "reference_label": "SFT"}},
        ],
    })
    records = run_pipeline(pipeline, print_fn=lambda line: None)
    assert ran == [("prompts",), ("label", 0), ("evaluate", 0), ("label", 1), ("evaluate", 1), ("label", 2), ("evaluate", 2)]
    assert [r["seed"] for r in records] == [None, 0, 0, 1, 1, 2, 2]
    summary = summarize_evaluations(pipeline)
    win = summary["figures"]["win_rate"]
    assert win["mean"] == pytest.approx(0.8) and win["half_width"] == pytest.approx(4.303 * 0.1 / 3**0.5)
    assert win["values"] == [0.7, 0.8, 0.9] and len(summary["reports"]) == 3
    table = final_table(records, summary)
    assert "mean ± 95% interval over 3 seeds" in table
    assert "80.0% ± 24.8%" in table and "2.00 ± 2.48" in table  # win rate; KL 1, 2, 3


def test_options_become_flags():
    assert option_argv({"k": 4, "min_gap": 0.5, "check": True, "skip": False}) == ["--k", "4", "--min-gap", "0.5", "--check"]


def test_vars_are_substituted_and_quick_replaces_them(tmp_path):
    """``{name}`` takes its value from ``vars`` (a number stays a number); ``--quick`` swaps in
    the file's ``quick`` values, seeds and output folder."""
    import yaml

    from lightning_rlhf.pipeline import load_pipeline

    config = {"output_dir": "out", "seeds": [0, 1, 2], "vars": {"policy": "builtin:toyworld-seed{seed}", "k": 4},
              "quick": {"seeds": [0], "output_dir": "quick-out", "vars": {"policy": "builtin:tiny-llama"}},
              "stages": [{"label": {**GOOD_LABEL, "policy": "{policy}", "k": "{k}", "seed": "{seed}"}}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    full, quick = load_pipeline(path), load_pipeline(path, quick=True)
    assert full.stages[0].for_seed(2).options["policy"] == "builtin:toyworld-seed2" and full.stages[0].options["k"] == 4
    assert (quick.seeds, str(quick.output_dir)) == ([0], "quick-out")
    assert quick.stages[0].options["policy"] == "builtin:tiny-llama" and quick.stages[0].options["output"] == "quick-out/pairs.jsonl"
    assert str(load_pipeline(path, quick=True, output_dir=str(tmp_path / "o")).output_dir) == str(tmp_path / "o")
    del config["quick"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(PipelineError, match="--quick needs a 'quick' mapping"):
        load_pipeline(path, quick=True)
