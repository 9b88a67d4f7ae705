"""Pipeline files: the shipped one parses and checks; mistakes are clear errors before any stage runs."""

import json
import re
from pathlib import Path

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


def test_var_replaces_a_files_variable_and_a_typo_is_an_error(tmp_path):
    """``--var NAME=VALUE`` replaces one of the file's ``vars`` (a number stays a number);
    a name the file does not define is an error that lists the ones it does."""
    import yaml

    from lightning_rlhf.pipeline import _parse_vars

    config = {"output_dir": "out", "vars": {"policy": "builtin:toyworld", "k": 4},
              "stages": [{"label": {**GOOD_LABEL, "policy": "{policy}", "k": "{k}", "seed": "{seed}"}}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    variables = _parse_vars(["policy=builtin:toyworld-seed{seed}", "k=8"])
    assert variables == {"policy": "builtin:toyworld-seed{seed}", "k": 8}
    pipeline = load_pipeline(path, variables=variables)
    assert pipeline.stages[0].for_seed(1).options["policy"] == "builtin:toyworld-seed1" and pipeline.stages[0].options["k"] == 8
    with pytest.raises(PipelineError, match=r"--var polcy: not a variable of this file; its 'vars' are: k, policy"):
        load_pipeline(path, variables={"polcy": "x"})
    with pytest.raises(PipelineError, match="expected NAME=VALUE"):
        _parse_vars(["policy"])
    assert load_pipeline(path, jobs=3).jobs == 3
    with pytest.raises(PipelineError, match="'jobs' must be a positive integer"):
        load_pipeline(path, jobs=0)


def _seeded_prompts_pipeline(tmp_path, jobs, train="{seed}", seeds=(0, 1, 2)):
    # toy-prompts stages made seeded: each seed writes its own files, nothing heavy to import
    return parse_pipeline({
        "output_dir": str(tmp_path), "seeds": list(seeds), "jobs": jobs,
        "stages": [
            {"toy-prompts": {"train": 1, "heldout": 1}},
            {"toy-prompts": {"train": train, "heldout": 2, "seed": "{seed}", "name": "p{seed}"}},
            {"toy-prompts": {"train": 3, "heldout": 0, "seed": "{seed}", "name": "q{seed}"}},
        ],
    })


def test_seeds_side_by_side_run_the_same_stages_and_write_the_same_files(tmp_path):
    """``jobs: 2``: each seed's block runs in a worker process; the records come back in
    seed order, the stage lines marked with the seed, and every file equals a serial run's."""
    serial_dir, parallel_dir = tmp_path / "serial", tmp_path / "parallel"
    serial = run_pipeline(_seeded_prompts_pipeline(serial_dir, jobs=1), print_fn=lambda line: None)
    lines = []
    parallel = run_pipeline(_seeded_prompts_pipeline(parallel_dir, jobs=2), print_fn=lines.append)
    key = [(r["stage"], r["number"], r["seed"], r["outcome"]) for r in serial]
    assert [(r["stage"], r["number"], r["seed"], r["outcome"]) for r in parallel] == key
    assert [r["seed"] for r in parallel] == [None, 0, 0, 1, 1, 2, 2]
    files = sorted(p.name for p in serial_dir.glob("*.jsonl"))
    assert len(files) == 10  # 2 unseeded; seed 0 writes no training prompts
    assert files == sorted(p.name for p in parallel_dir.glob("*.jsonl"))
    assert all((serial_dir / f).read_text() == (parallel_dir / f).read_text() for f in files)
    assert "running seeds 0, 1, 2 side by side: 2 processes" in "\n".join(lines)
    for seed in (0, 1, 2):
        assert f"[seed {seed}] [3/3] toy-prompts (seed {seed}) done" in "\n".join(lines)
        assert f"[3/3] toy-prompts (seed {seed}) done" in (parallel_dir / "logs" / f"seed{seed}.log").read_text()


def test_a_seed_that_fails_in_a_worker_names_the_seed_and_its_log(tmp_path):
    pipeline = _seeded_prompts_pipeline(tmp_path, jobs=2, train="{seed}x", seeds=(0, 1))
    with pytest.raises(PipelineError, match=r"^seed \d: ValueError: invalid literal .* \(full log: .*logs/seed\d\.log\)$") as error:
        run_pipeline(pipeline, print_fn=lambda line: None)
    assert error.value.__cause__ is None and "Traceback" not in str(error.value)  # one line for the user
    # the seed that failed first is named, its log holds the traceback (the other seed is stopped)
    log = Path(re.search(r"full log: (\S+)\)$", str(error.value)).group(1)).read_text()
    assert "Traceback" in log and "ValueError" in log
