"""Pipeline files: the shipped one parses and checks; mistakes are clear errors before any stage runs."""

import pytest

from lightning_rlhf.pipeline import PipelineError, load_pipeline, option_argv, parse_pipeline

GOOD_LABEL = {"policy": "builtin:tiny-llama", "prompts": "{output_dir}/p.jsonl", "output": "{output_dir}/pairs.jsonl"}


def test_the_toy_pipeline_parses_and_checks():
    pipeline = load_pipeline("recipes/pipelines/toy.yaml")
    assert [s.kind for s in pipeline.stages] == ["build", "toy-prompts", "label", "fit", "evaluate"]
    label = pipeline.stages[2].options
    assert label["output"] == str(pipeline.output_dir / "preferences.jsonl")  # {output_dir} substituted


def test_unknown_stage_names_the_stage_and_lists_the_valid_ones():
    with pytest.raises(PipelineError, match=r"stage 2: unknown stage 'lable'; stages are: build, toy-prompts, label, fit, evaluate"):
        parse_pipeline({"output_dir": "out", "stages": [{"build": {"model": "builtin:tiny-llama"}}, {"lable": GOOD_LABEL}]})


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"label": {**GOOD_LABEL, "kk": 4}}], r"stage 1 \(label\): unrecognized arguments: --kk 4"),
        ([{"label": {"policy": "x"}}], r"stage 1 \(label\): the following arguments are required"),
        ([{"fit": {"config": "recipes/nope.yaml"}}], r"stage 1 \(fit\): recipe 'recipes/nope.yaml' does not exist"),
        ([{"build": {"model": "x"}, "fit": {}}], r"stage 1 must be a one-key mapping"),
        ([], r"'stages' must be a non-empty list"),
    ],
)
def test_bad_stages_are_errors(stages, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline({"output_dir": "out", "stages": stages})


def test_options_become_flags():
    assert option_argv({"k": 4, "min_gap": 0.5, "check": True, "skip": False}) == ["--k", "4", "--min-gap", "0.5", "--check"]
