"""``lightning-rlhf pipeline PIPELINE.yaml``: several stages, one command.

A pipeline file names an output folder, the seeds to repeat the seeded stages over, and a
list of stages, each a one-key mapping ``<kind>: {options}``; ``{output_dir}`` in any string
is replaced by the folder and ``{seed}`` by each seed in turn::

    output_dir: runs/toy-pipeline
    seeds: [0, 1, 2]
    stages:
      - build: {model: builtin:toyworld}
      - toy-prompts: {train: 1000, heldout: 200}
      - label: {policy: builtin:toyworld, prompts: "{output_dir}/prompts-train.jsonl", output: ...}
      - fit: {config: recipes/dpo/toyworld.yaml, args: ["--data.init_args.path=..."]}
      - evaluate: {policy: ..., reference: builtin:toyworld, prompts: ..., output: ...}

Stage kinds:

- ``build``: build (or find cached) a ``builtin:`` model: ``{model}``;
- ``toy-prompts``: write toy-world prompts, ``prompts-train.jsonl`` and
  ``prompts-heldout.jsonl`` in the output folder: ``{train, heldout, seed}``, and
  ``world: arithmetic`` for the checkable world's (rows with an ``answer``), ``name`` for
  another file name than ``prompts`` (a count of 0 writes no file);
- ``label``: ``lightning-rlhf label`` with these options (``k: 4`` is ``--k 4``);
- ``fit``: ``lightning-rlhf fit --config <config> <args...>``, run in this process
  through the same LightningCLI;
- ``evaluate``: ``lightning-rlhf evaluate`` with these options; its JSON report (the
  ``output`` option) gives a column of the final before/after table (one column per
  evaluated policy, e.g. DPO on judge labels beside DPO on gold labels).

A stage whose options mention ``{seed}`` is *seeded*: each run of consecutive seeded stages
is repeated once per seed (label, fit and evaluate again for seed 1, ...), the others run
once (the SFT model is built once). When the last evaluate stage is seeded, the final
table gives each figure as a mean with its 95% interval over the seeds, and
``<output_dir>/evaluation.json`` holds those and every seed's report (the last
evaluation's at the top level, all of them under ``evaluations``): one seed's figure
moves with the sampling seed and the CPU's kernel path, the interval is what holds.

Every stage is checked before the first one runs, so a typo fails in a second, not
after ten minutes of training.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_rlhf import wait_policy
from lightning_rlhf.cpu import cpu_capability
from lightning_rlhf.pipeline_report import clock, final_table, frontier_figure, summarize_reports


class PipelineError(ValueError):
    pass


SEED = "{seed}"


@dataclass
class Stage:
    kind: str
    options: dict  # "{seed}" left in place in a seeded stage: see for_seed()
    number: int

    @property
    def seeded(self) -> bool:
        return SEED in json.dumps(self.options)

    def for_seed(self, seed: int) -> Stage:
        return Stage(self.kind, _substitute(self.options, SEED, str(seed)), self.number)


@dataclass
class Pipeline:
    output_dir: Path
    stages: list[Stage]
    source: str
    seeds: list[int]
    jobs: int = 1
    """seeds run side by side in this many processes (1: one after another, in this process)"""
    reference_memo: dict = field(default_factory=dict)
    """the reference's evaluation samples, drawn once for every evaluate stage that shares them"""


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


TOY_WORLDS = ("sentiment", "arithmetic")


def check_toy_prompts(stage: Stage) -> None:
    _check_keys(stage, {"train", "heldout", "seed", "world", "name"}, {"train", "heldout"})
    if stage.options.get("world", "sentiment") not in TOY_WORLDS:
        raise PipelineError(f"stage {stage.number} (toy-prompts): world must be one of {TOY_WORLDS}, got {stage.options['world']!r}")


def run_toy_prompts(stage: Stage, pipeline: Pipeline) -> str:
    if stage.options.get("world", "sentiment") == "arithmetic":
        from lightning_rlhf.toyworld.arithmetic import write_prompts
    else:
        from lightning_rlhf.toyworld.corpus import write_prompts

    seed, name = int(stage.options.get("seed", 0)), stage.options.get("name", "prompts")
    for split in ("train", "heldout"):
        if int(stage.options[split]) > 0:
            write_prompts(pipeline.output_dir / f"{name}-{split}.jsonl", int(stage.options[split]), split, seed)
    return f"{stage.options['train']} train and {stage.options['heldout']} held-out prompts"


def check_label(stage: Stage) -> None:
    from lightning_rlhf.commands.label import label_parser

    _check_with_parser(stage, label_parser())
    _check_judge(stage)


def _check_judge(stage: Stage) -> None:
    """A judge spec file is read and type-checked now; the model it names loads when the stage runs."""
    from lightning_rlhf.rewards.judge import check_judge_spec

    if "judge" in stage.options:
        try:
            check_judge_spec(str(stage.options["judge"]))
        except Exception as e:  # noqa: BLE001 (jsonargparse raises several kinds)
            raise PipelineError(f"stage {stage.number} ({stage.kind}): judge: {e}") from None


def run_label(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.commands.label import label_command

    label_command(option_argv(stage.options))
    return f"wrote {stage.options['output']}"


def check_fit(stage: Stage) -> None:
    _check_keys(stage, {"config", "args"}, {"config"})
    if not Path(stage.options["config"]).is_file():
        raise PipelineError(f"stage {stage.number} (fit): recipe {stage.options['config']!r} does not exist")
    if not isinstance(stage.options.get("args", []), list):
        raise PipelineError(f"stage {stage.number} (fit): 'args' must be a list of command-line overrides")
    from jsonargparse import ArgumentError

    from lightning_rlhf.training_cli import RecipeCheckCLI, one_line

    try:
        RecipeCheckCLI(args=["--config", stage.options["config"], *map(str, stage.options.get("args", []))], run=False, exit_on_error=False)
    except (ArgumentError, ValueError) as e:
        raise PipelineError(f"stage {stage.number} (fit): {one_line(e)}") from None


def run_fit(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.training_cli import RLHFCLI

    args = ["fit", "--config", stage.options["config"], *map(str, stage.options.get("args", []))]
    try:
        RLHFCLI(args=args)
    finally:
        # Lightning's WandbLogger adopts a W&B run still open in the process: without this,
        # every later fit of the pipeline would log into this one's run.
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
    return f"fit {stage.options['config']}"


def check_evaluate(stage: Stage) -> None:
    from lightning_rlhf.commands.evaluate import evaluate_parser

    _check_with_parser(stage, evaluate_parser())
    _check_judge(stage)


def run_evaluate(stage: Stage, pipeline: Pipeline) -> str:
    from lightning_rlhf.commands.evaluate import evaluate_command

    evaluate_command(option_argv(stage.options), reference_memo=pipeline.reference_memo)
    return f"wrote {stage.options.get('output') or '(no --output)'}"


STAGES: dict[str, tuple[Callable[[Stage], None], Callable[[Stage, Pipeline], str]]] = {
    "build": (check_build, run_build),
    "toy-prompts": (check_toy_prompts, run_toy_prompts),
    "label": (check_label, run_label),
    "fit": (check_fit, run_fit),
    "evaluate": (check_evaluate, run_evaluate),
}


# -- reading and running -----------------------------------------------------------------
def _substitute(value, placeholder: str, text: str):
    if isinstance(value, str):
        return value.replace(placeholder, text)
    if isinstance(value, list):
        return [_substitute(v, placeholder, text) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, placeholder, text) for k, v in value.items()}
    return value


def _parse_seeds(config: dict, source: str) -> list[int]:
    seeds = config.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise PipelineError(f"{source}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise PipelineError(f"{source}: 'seeds' repeats a seed: {seeds}")
    return seeds


def _parse_jobs(config: dict, source: str) -> int:
    jobs = config.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise PipelineError(f"{source}: 'jobs' must be a positive integer, got {jobs!r}")
    return jobs


KEYS = ("output_dir", "stages", "seeds", "jobs", "vars", "quick")
VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_vars(value, variables: dict):
    """``{name}`` of each variable replaced by its value (kept as a number when it is the
    whole string); ``{output_dir}`` and ``{seed}`` are left for later."""
    if isinstance(value, str):
        whole = VARIABLE.fullmatch(value)
        if whole and whole.group(1) in variables:
            return _substitute_vars(variables[whole.group(1)], variables)
        return VARIABLE.sub(lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), value)
    if isinstance(value, list):
        return [_substitute_vars(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_vars(v, variables) for k, v in value.items()}
    return value


def apply_quick(config: dict, source: str) -> dict:
    """The file with its ``quick`` section applied: ``seeds``, ``output_dir`` and ``vars``
    there replace the file's (a smoke run of the same stages, in seconds)."""
    quick = config.get("quick")
    if not isinstance(quick, dict):
        raise PipelineError(f"{source}: --quick needs a 'quick' mapping in the file (seeds, output_dir, vars to replace)")
    unknown = set(quick) - {"seeds", "output_dir", "jobs", "vars"}
    if unknown:
        raise PipelineError(f"{source}: quick: unknown key(s) {sorted(unknown)}; expected 'seeds', 'output_dir', 'jobs' and 'vars'")
    return config | {k: v for k, v in quick.items() if k != "vars"} | {"vars": {**config.get("vars", {}), **quick.get("vars", {})}}


def parse_pipeline(config: dict, source: str = "<pipeline>") -> Pipeline:
    """A checked :class:`Pipeline` from the parsed YAML; every problem is a PipelineError.

    ``vars``: values substituted for ``{name}`` anywhere in the stages (sizes, the SFT
    model), so that the file's ``quick`` section can shrink a run by replacing a few."""
    if not isinstance(config, dict):
        raise PipelineError(f"{source}: expected a mapping with 'output_dir' and 'stages'")
    unknown = set(config) - set(KEYS)
    if unknown:
        raise PipelineError(f"{source}: unknown key(s) {sorted(unknown)}; expected {', '.join(map(repr, KEYS))}")
    if "output_dir" not in config or "stages" not in config:
        raise PipelineError(f"{source}: needs 'output_dir' and 'stages'")
    variables = config.get("vars") or {}
    if not isinstance(variables, dict) or {"seed", "output_dir"} & set(variables):
        raise PipelineError(f"{source}: 'vars' must be a mapping of names to values (not 'seed' or 'output_dir')")
    output_dir = str(config["output_dir"])
    seeds = _parse_seeds(config, source)
    config = config | {"stages": _substitute_vars(config["stages"], variables)}
    left = {name for name in VARIABLE.findall(json.dumps(config["stages"])) if name not in ("seed", "output_dir")}
    if left:
        raise PipelineError(f"{source}: unknown variable(s) {sorted('{' + n + '}' for n in left)}; 'vars' defines: {sorted(variables) or 'none'}")
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
        stage = Stage(kind, _substitute(options, "{output_dir}", output_dir), number)
        # A fit's overrides differ between seeds by the seed alone: its recipe (the slow
        # check) is parsed for the first seed only.
        for seed in (seeds[:1] if kind == "fit" else seeds) if stage.seeded else [None]:
            STAGES[kind][0](stage if seed is None else stage.for_seed(seed))
        stages.append(stage)
    pipeline = Pipeline(Path(output_dir), stages, source, seeds, _parse_jobs(config, source))
    summary = pipeline.output_dir / "evaluation.json"
    last = _last_evaluation(pipeline)
    if last is not None and last.seeded and Path(last.for_seed(seeds[0]).options["output"]) == summary:
        raise PipelineError(f"{source}: stage {last.number} (evaluate): a seeded evaluation writes one report per seed "
                            f"(put {SEED} in its 'output'); {summary} holds their summary")
    return pipeline


def load_pipeline(path: str | Path, seeds: list[int] | None = None, quick: bool = False, output_dir: str | None = None,
                  variables: dict[str, str] | None = None, jobs: int | None = None) -> Pipeline:
    """Read and check a pipeline file; ``quick`` applies the file's ``quick`` section;
    ``seeds``, ``output_dir``, ``jobs`` and ``variables`` (values of names the file's
    ``vars`` defines) then replace the file's own."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline file {str(path)!r} does not exist")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        return parse_pipeline(config, str(path))
    if quick:
        config = apply_quick(config, str(path))
    if variables:
        unknown = set(variables) - set(config.get("vars") or {})
        if unknown:
            raise PipelineError(f"{path}: --var {', '.join(sorted(unknown))}: not a variable of this file; "
                                f"its 'vars' are: {', '.join(sorted(config.get('vars') or {})) or 'none'}")
        config["vars"] = {**config["vars"], **variables}
    for key, value in (("seeds", seeds), ("output_dir", output_dir), ("jobs", jobs)):
        if value is not None:
            config[key] = value
    return parse_pipeline(config, str(path))


def cpu_seconds() -> float:
    """User CPU time of this process and its finished children, in seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime


def _blocks(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive seeded stages as one block (repeated per seed); every other stage alone."""
    blocks: list[list[Stage]] = []
    for stage in stages:
        if stage.seeded and blocks and blocks[-1][0].seeded:
            blocks[-1].append(stage)
        else:
            blocks.append([stage])
    return blocks


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_stage(stage: Stage, seed: int | None, pipeline: Pipeline, label: str, total: int,
              print_fn: Callable[[str], None], started: float) -> dict:
    """Run one stage (for one seed); print its start and end; return its timing record."""
    run = stage if seed is None else stage.for_seed(seed)
    started_at, stage_started, stage_cpu = time.time(), time.perf_counter(), cpu_seconds()
    print_fn(f"[{stage.number}/{total}] {label} ...")
    outcome = STAGES[stage.kind][1](run, pipeline)
    record = {
        "stage": stage.kind,
        "number": stage.number,
        "seed": seed,
        "started_at": started_at,  # wall-clock: comparable across the processes seeds run in
        "seconds": time.perf_counter() - stage_started,
        "user_cpu_seconds": cpu_seconds() - stage_cpu,
        "outcome": outcome,
    }
    print_fn(
        f"[{stage.number}/{total}] {label} done in {clock(record['seconds'])} "
        f"(cpu {clock(record['user_cpu_seconds'])}, total {clock(time.perf_counter() - started)}): {outcome}"
    )
    return record


def run_pipeline(pipeline: Pipeline, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Run every stage in order (seeded blocks once per seed); returns one timing record per
    stage run. With ``pipeline.jobs`` > 1 a seeded block's seeds run side by side in
    worker processes (see :func:`run_seeds_in_parallel`)."""
    pipeline.output_dir.mkdir(parents=True, exist_ok=True)
    started, records = time.perf_counter(), []
    total = len(pipeline.stages)
    for block in _blocks(pipeline.stages):
        if block[0].seeded and pipeline.jobs > 1 and len(pipeline.seeds) > 1:
            records += run_seeds_in_parallel(pipeline, block, print_fn)
            continue
        seeds = pipeline.seeds if block[0].seeded else [None]
        for seed in seeds:
            for stage in block:
                label = stage.kind if seed is None else f"{stage.kind} (seed {seed}, {seeds.index(seed) + 1} of {len(seeds)})"
                records.append(run_stage(stage, seed, pipeline, label, total, print_fn, started))
    return records


# -- seeds side by side ------------------------------------------------------------------
# The stages of one seed never read another seed's files, so seeds can run at once. On a
# few CPU cores this pays: the toy world's models are small, and one process uses two
# threads at about 70% (user CPU / wall time 1.35 in the canonical pipeline's stages).
def run_seeds_in_parallel(pipeline: Pipeline, block: list[Stage], print_fn: Callable[[str], None]) -> list[dict]:
    """Each seed's run of `block` in a worker process of its own (at most ``pipeline.jobs`` at once),
    each with an equal share of the cores as its thread count. A worker's own output (fit
    logs, progress bars) goes to ``<output_dir>/logs/seed<N>.log``; the stage lines come
    here, marked with the seed. Records are returned in seed order."""
    import multiprocessing

    seeds = pipeline.seeds
    workers = min(pipeline.jobs, len(seeds))
    threads = max(1, available_cores() // workers)
    (pipeline.output_dir / "logs").mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no forked torch thread pools
    lines = context.Queue()
    print_fn(f"running seeds {', '.join(map(str, seeds))} side by side: {workers} processes, {threads} thread(s) each; "
             f"their logs in {pipeline.output_dir / 'logs'}")
    results = {}
    with wait_policy.side_by_side(workers):  # the workers start here, sharing the cores
        pool = context.Pool(workers, initializer=_worker_init, initargs=(lines,))
    try:
        pending = {seed: pool.apply_async(_run_seed_block, ((pipeline, block, seed, threads),))
                   for seed in seeds}
        # A worker's lines reach the queue through a feeder thread, possibly after its result:
        # each seed's last message is its number, and the loop waits for every one.
        ended: set[int] = set()
        quiet = 0.0
        while pending or (ended != set(seeds) and quiet < 10.0):
            try:
                item = lines.get(timeout=0.2)
                quiet = 0.0
            except queue.Empty:
                item, quiet = None, (quiet + 0.2 if not pending else 0.0)  # a crashed worker sends no last message
            if isinstance(item, str):
                print_fn(item)
            elif item is not None:
                ended.add(item)
            for seed in [seed for seed, result in pending.items() if result.ready()]:
                try:
                    results[seed] = pending.pop(seed).get()
                except PipelineError as e:
                    # raised again without the worker's traceback attached (it is in the seed's
                    # log); the pool is then stopped
                    raise PipelineError(str(e)) from None
        pool.close()  # every seed is done: the workers exit on their own
    except BaseException:
        pool.terminate()  # stop the seeds still running
        raise
    finally:
        pool.join()
        lines.close()
        lines.join_thread()
    return [record for seed in seeds for record in results[seed]]


_LINES = None  # in a worker: the queue that carries its stage lines to the parent


def _worker_init(lines) -> None:
    global _LINES
    _LINES = lines


def _run_seed_block(task) -> list[dict]:
    import torch

    pipeline, block, seed, threads = task
    torch.set_num_threads(threads)
    total, started = len(pipeline.stages), time.perf_counter()
    log = pipeline.output_dir / "logs" / f"seed{seed}.log"
    # Everything the worker writes, W&B's service and C libraries included, goes to its log.
    with open(log, "w") as out:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out.fileno(), 1), os.dup2(out.fileno(), 2)

    def report(line: str) -> None:
        print(line, flush=True)
        _LINES.put(f"[seed {seed}] {line}")

    try:
        return [run_stage(stage, seed, pipeline, f"{stage.kind} (seed {seed})", total, report, started) for stage in block]
    except Exception as e:
        import traceback

        traceback.print_exc()  # into the seed's log; the parent prints one line
        sys.stderr.flush()
        raise PipelineError(f"seed {seed}: {type(e).__name__}: {e} (full log: {log})") from None
    finally:
        _LINES.put(seed)  # this seed's last message


def _last_evaluation(pipeline: Pipeline) -> Stage | None:
    evaluations = [s for s in pipeline.stages if s.kind == "evaluate" and s.options.get("output")]
    return evaluations[-1] if evaluations else None


def summarize_evaluations(pipeline: Pipeline, stage: Stage | None = None) -> dict | None:
    """Each figure of an evaluate stage (default: the last one that writes a report) as a
    mean and 95% interval over the seeds it ran with, beside every seed's own report; None
    when there is no such stage."""
    stage = stage or _last_evaluation(pipeline)
    if stage is None:
        return None
    seeds = pipeline.seeds if stage.seeded else [None]
    reports = [json.loads(Path((stage if seed is None else stage.for_seed(seed)).options["output"]).read_text()) for seed in seeds]
    return summarize_reports(reports, seeds, stage.options.get("reference_label", "reference"), stage.options.get("policy_label", "policy"))


def evaluation_summaries(pipeline: Pipeline) -> list[dict]:
    """The summary of every evaluate stage that writes a report, in pipeline order: the
    methods a pipeline compares, each against its reference."""
    return [summarize_evaluations(pipeline, stage) for stage in pipeline.stages if stage.kind == "evaluate" and stage.options.get("output")]


def _parse_vars(pairs: list[str]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise PipelineError(f"--var {pair!r}: expected NAME=VALUE")
        try:
            scalar = yaml.safe_load(value)
        except yaml.YAMLError:
            scalar = value
        # numbers as numbers (--var train_prompts=64), anything else as written
        variables[name] = scalar if isinstance(scalar, (int, float)) and not isinstance(scalar, bool) else value
    return variables


def pipeline_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-rlhf pipeline", description="Run the stages of a pipeline file (build, toy-prompts, label, fit, evaluate) one after another.")
    parser.add_argument("file", help="pipeline YAML (e.g. recipes/pipelines/canonical.yaml)")
    parser.add_argument("--check", action="store_true", help="only read and check the stages")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="run the seeded stages with these seeds instead of the file's (e.g. --seeds 0 for one quick pass)")
    parser.add_argument("--output-dir", default=None, help="write here instead of the file's output_dir")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="replace one of the file's vars (repeatable), e.g. --var 'sft=builtin:toyworld-seed{seed}' "
                        "to give each seed a toy world of its own")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="run the seeds side by side in N processes, sharing the cores (default: the file's 'jobs', else 1)")
    parser.add_argument("--quick", action="store_true",
                        help="apply the file's 'quick' section: the same stages on a tiny model and a few steps, in seconds "
                        "(a smoke test of the whole pipeline; its numbers mean nothing)")
    args = parser.parse_args(argv)
    try:
        pipeline = load_pipeline(args.file, seeds=args.seeds, quick=args.quick, output_dir=args.output_dir,
                                 variables=_parse_vars(args.var), jobs=args.jobs)
    except PipelineError as e:
        parser.exit(2, f"error: {e}\n")
    if args.check:
        print(f"{args.file}: {len(pipeline.stages)} stages OK: {', '.join(s.kind for s in pipeline.stages)}")
        return 0
    records = run_pipeline(pipeline, print_fn=lambda line: print(line, flush=True))
    summaries = evaluation_summaries(pipeline)
    table = final_table(records, summaries)
    print("\n" + table)
    written = []
    if summaries and _last_evaluation(pipeline).seeded:
        # the last evaluation at the top level (as a one-method pipeline writes it), every one under "evaluations"
        summary = summaries[-1] | {"evaluations": summaries if len(summaries) > 1 else []}
        written.append(pipeline.output_dir / "evaluation.json")
        written[-1].write_text(json.dumps(summary | {"cpu_capability": cpu_capability()}, indent=2) + "\n")
    if summaries:
        note = f"{cpu_capability()} kernels; bars: 95% t-interval of the mean over seeds, x: each seed"
        written.append(frontier_figure(summaries, pipeline.output_dir / "frontier.png", note))
    from lightning_rlhf.plot_runs import monitored_curves

    if curves := monitored_curves(pipeline.output_dir, pipeline.output_dir / "curves.png"):
        written.append(curves)
    (pipeline.output_dir / "pipeline.json").write_text(json.dumps({"stages": records, "cpu_capability": cpu_capability()}, indent=2) + "\n")
    (pipeline.output_dir / "summary.txt").write_text(table + "\n")
    print("\nwrote " + ", ".join(str(path) for path in [*written, pipeline.output_dir / "summary.txt"]))
    return 0
