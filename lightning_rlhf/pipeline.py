"""``lightning-rlhf pipeline PIPELINE.yaml``: several stages, one command.

A pipeline file names an output folder and a list of stages, each a one-key mapping
``<kind>: {options}``; ``{output_dir}`` in any string is replaced by the folder::

    output_dir: runs/toy-pipeline
    stages:
      - build: {model: builtin:toyworld}
      - toy-prompts: {train: 1000, heldout: 200}
      - label: {policy: builtin:toyworld, prompts: "{output_dir}/prompts-train.jsonl", output: ...}
      - fit: {config: recipes/dpo/toyworld.yaml, args: ["--data.init_args.path=..."]}
      - evaluate: {policy: ..., reference: builtin:toyworld, prompts: ..., output: ...}

Stage kinds:

- ``build``: build (or find cached) a ``builtin:`` model: ``{model}``;
- ``toy-prompts``: write toy-world prompts, ``prompts-train.jsonl`` and
  ``prompts-heldout.jsonl`` in the output folder: ``{train, heldout, seed}``;
- ``label``: ``lightning-rlhf label`` with these options (``k: 4`` is ``--k 4``);
- ``fit``: ``lightning-rlhf fit --config <config> <args...>``, run in this process
  through the same LightningCLI;
- ``evaluate``: ``lightning-rlhf evaluate`` with these options; its JSON report (the
  ``output`` option) gives the final before/after table.

Every stage is checked before the first one runs, so a typo fails in a second, not
after ten minutes of training.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class PipelineError(ValueError):
    pass


@dataclass
class Stage:
    kind: str
    options: dict
    number: int


@dataclass
class Pipeline:
    output_dir: Path
    stages: list[Stage]
    source: str


def option_argv(options: dict) -> list[str]:
    """``{"k": 4, "min_gap": 0.1, "dry": True}`` -> ``["--k", "4", "--min-gap", "0.1", "--dry"]``."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        else:
            argv += [flag, str(value)]
    return argv


def _check_keys(stage: Stage, allowed: set[str], required: set[str]) -> None:
    unknown = set(stage.options) - allowed
    if unknown:
        raise PipelineError(f"stage {stage.number} ({stage.kind}): unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    missing = required - set(stage.options)
    if missing:
        raise PipelineError(f"stage {stage.number} ({stage.kind}): missing option(s) {sorted(missing)}")


def _check_with_parser(stage: Stage, parser: argparse.ArgumentParser) -> None:
    # argparse reports problems by exiting; turn that into an error naming the stage.
    parser.exit_on_error = False
    parser.error = lambda message: (_ for _ in ()).throw(PipelineError(f"stage {stage.number} ({stage.kind}): {message}"))
    try:
        parser.parse_args(option_argv(stage.options))
    except argparse.ArgumentError as e:
        raise PipelineError(f"stage {stage.number} ({stage.kind}): {e}") from None


# -- the stages ------------------------------------------------------------------------
def check_build(stage: Stage) -> None:
    _check_keys(stage, {"model"}, {"model"})


def run_build(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.models.builtin import resolve

    return f"{stage.options['model']} at {resolve(stage.options['model'])}"


def check_toy_prompts(stage: Stage) -> None:
    _check_keys(stage, {"train", "heldout", "seed"}, {"train", "heldout"})


def run_toy_prompts(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.toyworld.corpus import write_prompts

    seed = int(stage.options.get("seed", 0))
    for split in ("train", "heldout"):
        write_prompts(pipeline.output_dir / f"prompts-{split}.jsonl", int(stage.options[split]), split, seed)
    return f"{stage.options['train']} train and {stage.options['heldout']} held-out prompts"


def check_label(stage: Stage) -> None:
    from lightning_rlhf.collect import label_parser

    _check_with_parser(stage, label_parser())


def run_label(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.collect import label_command

    label_command(option_argv(stage.options))
    return f"wrote {stage.options['output']}"


def check_fit(stage: Stage) -> None:
    _check_keys(stage, {"config", "args"}, {"config"})
    if not Path(stage.options["config"]).is_file():
        raise PipelineError(f"stage {stage.number} (fit): recipe {stage.options['config']!r} does not exist")
    if not isinstance(stage.options.get("args", []), list):
        raise PipelineError(f"stage {stage.number} (fit): 'args' must be a list of command-line overrides")


def run_fit(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.cli import RLHFCLI

    args = ["fit", "--config", stage.options["config"], *map(str, stage.options.get("args", []))]
    RLHFCLI(args=args)
    return f"fit {stage.options['config']}"


def check_evaluate(stage: Stage) -> None:
    from lightning_rlhf.evaluate import evaluate_parser

    _check_with_parser(stage, evaluate_parser())


def run_evaluate(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.evaluate import evaluate_command

    evaluate_command(option_argv(stage.options))
    return f"wrote {stage.options.get('output') or '(no --output)'}"


STAGES: dict[str, tuple[Callable[[Stage], None], Callable[[Stage, Pipeline], str]]] = {
    "build": (check_build, run_build),
    "toy-prompts": (check_toy_prompts, run_toy_prompts),
    "label": (check_label, run_label),
    "fit": (check_fit, run_fit),
    "evaluate": (check_evaluate, run_evaluate),
}


# -- reading and running -----------------------------------------------------------------
def _substitute(value, output_dir: str):
    if isinstance(value, str):
        return value.replace("{output_dir}", output_dir)
    if isinstance(value, list):
        return [_substitute(v, output_dir) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, output_dir) for k, v in value.items()}
    return value


def parse_pipeline(config: dict, source: str = "<pipeline>") -> Pipeline:
    """A checked :class:`Pipeline` from the parsed YAML; every problem is a PipelineError."""
    if not isinstance(config, dict):
        raise PipelineError(f"{source}: expected a mapping with 'output_dir' and 'stages'")
    unknown = set(config) - {"output_dir", "stages"}
    if unknown:
        raise PipelineError(f"{source}: unknown key(s) {sorted(unknown)}; expected 'output_dir' and 'stages'")
    if "output_dir" not in config or "stages" not in config:
        raise PipelineError(f"{source}: needs 'output_dir' and 'stages'")
    output_dir = str(config["output_dir"])
    raw_stages = config["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise PipelineError(f"{source}: 'stages' must be a non-empty list")
    stages = []
    for number, raw in enumerate(raw_stages, start=1):
        if not isinstance(raw, dict) or len(raw) != 1:
            raise PipelineError(f"{source}: stage {number} must be a one-key mapping '<kind>: {{options}}', got {raw!r}")
        (kind, options), = raw.items()
        if kind not in STAGES:
            raise PipelineError(f"{source}: stage {number}: unknown stage {kind!r}; stages are: {', '.join(STAGES)}")
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise PipelineError(f"{source}: stage {number} ({kind}): options must be a mapping, got {options!r}")
        stage = Stage(kind, _substitute(options, output_dir), number)
        STAGES[kind][0](stage)
        stages.append(stage)
    return Pipeline(Path(output_dir), stages, source)


def load_pipeline(path: str | Path) -> Pipeline:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline file {str(path)!r} does not exist")
    return parse_pipeline(yaml.safe_load(path.read_text()), str(path))


def cpu_seconds() -> float:
    """User CPU time of this process and its finished children, in seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def run_pipeline(pipeline: Pipeline, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Run every stage in order; returns one timing record per stage."""
    pipeline.output_dir.mkdir(parents=True, exist_ok=True)
    started, records = time.perf_counter(), []
    total = len(pipeline.stages)
    for stage in pipeline.stages:
        stage_started, stage_cpu = time.perf_counter(), cpu_seconds()
        print_fn(f"[{stage.number}/{total}] {stage.kind} ...")
        outcome = STAGES[stage.kind][1](stage, pipeline)
        record = {
            "stage": stage.kind,
            "seconds": time.perf_counter() - stage_started,
            "user_cpu_seconds": cpu_seconds() - stage_cpu,
            "outcome": outcome,
        }
        records.append(record)
        print_fn(
            f"[{stage.number}/{total}] {stage.kind} done in {_clock(record['seconds'])} "
            f"(cpu {_clock(record['user_cpu_seconds'])}, total {_clock(time.perf_counter() - started)}): {outcome}"
        )
    return records


def final_table(pipeline: Pipeline, records: list[dict]) -> str:
    """Stage times, then the before/after table of the last evaluate stage with an output."""
    lines = ["stage        wall       user cpu"]
    lines += [f"{r['stage']:<12} {_clock(r['seconds']):>9}  {_clock(r['user_cpu_seconds']):>9}" for r in records]
    lines.append(f"{'total':<12} {_clock(sum(r['seconds'] for r in records)):>9}  {_clock(sum(r['user_cpu_seconds'] for r in records)):>9}")
    evaluations = [s for s in pipeline.stages if s.kind == "evaluate" and s.options.get("output")]
    if evaluations:
        stage = evaluations[-1]
        report = json.loads(Path(stage.options["output"]).read_text())
        before, after = stage.options.get("reference_label", "reference"), stage.options.get("policy_label", "policy")
        kl = "n/a" if report["kl"] is None else f"{report['kl']:.2f}"
        rows = [
            ("", before, after),
            ("mean gold reward" if report.get("reward") == "gold" else "mean reward",
             f"{report['reference']['mean_reward']:+.3f}", f"{report['policy']['mean_reward']:+.3f}"),
            (f"win rate vs {before}", "50.0%", f"{report['win_rate']:.1%}"),
            (f"KL to {before} (nats)", "0", kl),
            ("mean length (tokens)", f"{report['reference']['mean_length']:.1f}", f"{report['policy']['mean_length']:.1f}"),
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines.append(f"\n{before} -> {after} on {report['prompts']} held-out prompts:")
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def pipeline_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-rlhf pipeline", description="Run the stages of a pipeline file (build, toy-prompts, label, fit, evaluate) one after another.")
    parser.add_argument("file", help="pipeline YAML (e.g. recipes/pipelines/toy.yaml)")
    parser.add_argument("--check", action="store_true", help="only read and check the stages")
    args = parser.parse_args(argv)
    try:
        pipeline = load_pipeline(args.file)
    except PipelineError as e:
        parser.exit(2, f"error: {e}\n")
    if args.check:
        print(f"{args.file}: {len(pipeline.stages)} stages OK: {', '.join(s.kind for s in pipeline.stages)}")
        return 0
    records = run_pipeline(pipeline, print_fn=lambda line: print(line, flush=True))
    table = final_table(pipeline, records)
    print("\n" + table)
    (pipeline.output_dir / "pipeline.json").write_text(json.dumps({"stages": records}, indent=2) + "\n")
    (pipeline.output_dir / "summary.txt").write_text(table + "\n")
    return 0
