"""The README's toy-world tables, each figure a mean with its 95% interval over seeds.

    python benchmarks/toyworld_tables.py objectives      # every offline objective on gold-labelled pairs
    python benchmarks/toyworld_tables.py self-training   # rejection sampling, ReST and best-of-n
    python benchmarks/toyworld_tables.py rlvr            # the checkable world: GRPO family, RLOO, REINFORCE++,
                                                         # online DPO, PPO, rejection sampling; held-out accuracy
    python benchmarks/toyworld_tables.py pooled A.json B.json ...  # where a rerun lands
    python benchmarks/toyworld_tables.py rlvr-report A.json B.json --figure F.png  # rlvr methods run apart, joined

``pooled`` reads the same results measured on several kernel paths (a pipeline's
``evaluation.json`` or a table's ``<table>.json``), pools every seed's value and prints, per
figure, the pooled mean with the 95% interval a new run of as many seeds is expected to
land in (``lightning_rlhf.stats.rerun_interval``), and whether each input's own mean does.

Each table is a pipeline (``lightning_rlhf.pipeline``) built here and run with the same
stages a user runs: per seed, label the SFT model's samples with the gold reward (seed s),
train each method (``seed_everything`` s) and evaluate it against the SFT model on the 200
held-out prompts (sampling seed s). Writes ``<out>/<table>.json`` (every seed's report and
the summaries) and ``<out>/<table>.md`` (the table), and prints the table with the CPU
kernel path it ran on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lightning_rlhf.cpu import cpu_capability
from lightning_rlhf.pipeline import parse_pipeline, run_pipeline, summarize_evaluations
from lightning_rlhf.pipeline_report import format_figure
from lightning_rlhf.stats import Interval, mean_interval, rerun_interval

OBJECTIVES = ("dpo", "ipo", "simpo", "orpo", "cpl", "kto", "cpl_ranking")
NAMES = {"kto": "kto (pairs read with `from_pairs`)", "cpl_ranking": "cpl_ranking (K = 4 rankings)"}


def fit_stage(recipe: str, run: str, data: str, *extra: str) -> dict:
    root = f"{{output_dir}}/seed{{seed}}/{run}"
    return {"fit": {"config": recipe, "args": [
        "--seed_everything={seed}", f"--data.init_args.path={data}", f"--trainer.default_root_dir={root}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--model.init_args.export_dir={root}/export", *extra,
    ]}}


def evaluate_stage(run: str, *, policy: str | None = None, **options) -> dict:
    return {"evaluate": {"policy": policy or f"{{output_dir}}/seed{{seed}}/{run}/export", "reference": "builtin:toyworld",
                         "prompts": "{output_dir}/prompts-heldout.jsonl", "reward": "gold", "seed": "{seed}",
                         "policy_label": run, "reference_label": "SFT",
                         "output": f"{{output_dir}}/seed{{seed}}/{run}/evaluation.json"} | options}


def label_stage(output: str, mode: str, prompts: int) -> dict:
    return {"label": {"policy": "builtin:toyworld", "prompts": "{output_dir}/prompts-train.jsonl", "reward": "gold", "k": 4,
                      "mode": mode, "seed": "{seed}", "limit": prompts, "output": f"{{output_dir}}/seed{{seed}}/{output}"}}


def objectives_pipeline(out: str, seeds: list[int], objectives: list[str]) -> dict:
    stages = [{"build": {"model": "builtin:toyworld"}}, {"toy-prompts": {"train": 1000, "heldout": 200, "seed": 0}},
              label_stage("preferences.jsonl", "best-worst", 1000)]
    if "cpl_ranking" in objectives:
        stages.append(label_stage("rankings.jsonl", "ranking", 1000))
    for objective in objectives:
        data = "{output_dir}/seed{seed}/" + ("rankings.jsonl" if objective == "cpl_ranking" else "preferences.jsonl")
        # one epoch each, whatever the recipe says (dpo's trains two in the main pipeline)
        stages += [fit_stage(f"recipes/{objective}/toyworld.yaml", objective, data, "--trainer.max_epochs=1"), evaluate_stage(objective)]
    return {"output_dir": out, "seeds": seeds, "stages": stages}


def self_training_pipeline(out: str, seeds: list[int], best_of_n: str) -> dict:
    prompts = "{output_dir}/prompts-train.jsonl"
    rs = "recipes/rejection_sampling/toyworld.yaml"
    stages = [
        {"build": {"model": "builtin:toyworld"}}, {"toy-prompts": {"train": 512, "heldout": 200, "seed": 0}},
        fit_stage(rs, "rejection-sampling-offline", prompts, "--model.init_args.algorithm.init_args.rounds=1", "--trainer.max_epochs=1"),
        evaluate_stage("rejection-sampling-offline"),
        fit_stage(rs, "rejection-sampling-3-rounds", prompts),
        evaluate_stage("rejection-sampling-3-rounds"),
        fit_stage("recipes/rest/toyworld.yaml", "rest", prompts),
        evaluate_stage("rest"),
        # best-of-n from the SFT model, selected by the gold reward itself (an oracle)
        evaluate_stage("best-of-n", policy="builtin:toyworld", best_of_n=best_of_n),
    ]
    return {"output_dir": out, "seeds": seeds, "stages": stages}


RLVR_METHODS = ("grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp", "online_dpo", "ppo", "rejection_sampling")
CHECKABLE = {"reference": "builtin:arithmetic", "prompts": "{output_dir}/prompts-heldout.jsonl", "max_new_tokens": 40,
             "reward": "lightning_rlhf.rewards.answers.exact_answer"}


def rlvr_pipeline(out: str, seeds: list[int], methods: list[str]) -> dict:
    """Every method on the checkable world with the same budget: 7680 sampled completions
    (60 rollouts of 128, or 3 rounds of 8 samples of 320 prompts), the exact-answer reward."""
    prompts = "{output_dir}/prompts-train.jsonl"
    stages = [{"build": {"model": "builtin:arithmetic"}},
              {"toy-prompts": {"world": "arithmetic", "train": 7680, "heldout": 500, "seed": 0}}]
    if "rejection_sampling" in methods:
        stages.append({"toy-prompts": {"world": "arithmetic", "name": "rs-prompts", "train": 320, "heldout": 0, "seed": 0}})
    for method in methods:
        if method in STEP_METHODS:  # GRPO with process supervision: a reward per step
            fit = fit_stage("recipes/grpo/arithmetic.yaml", method, prompts, "--model.init_args.algorithm.init_args.process_rewards=true",
                            f"--model.init_args.reward={json.dumps(STEP_METHODS[method])}")
        elif method in PPO_STEP_METHODS:  # PPO with dense rewards: each step's score at the token that ends it
            fit = fit_stage("recipes/ppo/arithmetic.yaml", method, prompts, "--model.init_args.algorithm.init_args.step_rewards=true",
                            f"--model.init_args.reward={json.dumps(PPO_STEP_METHODS[method])}")
        elif method in ONLINE_PRM_METHODS:  # PRIME: an implicit PRM learns from the outcomes as the policy trains
            fit = fit_stage("recipes/grpo/arithmetic.yaml", method, prompts,
                            "--model.init_args.algorithm.init_args.online_process_rewards=true",
                            f"--model.init_args.algorithm.init_args.process_weight={ONLINE_PRM_METHODS[method]}",
                            f"--model.init_args.reward={json.dumps(ONLINE_PRM)}",
                            # the PRM's own metrics (loss, outcome accuracy) as it learns, to read afterwards
                            "--trainer.logger=" + json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                              "init_args": {"save_dir": f"{{output_dir}}/seed{{seed}}/{method}"}}))
        elif method in GRPO_LOSSES:
            fit = fit_stage("recipes/grpo/arithmetic.yaml", method, prompts, f"--model.init_args.algorithm.init_args.loss_type={method}")
        elif method == "rejection_sampling":
            fit = fit_stage("recipes/rejection_sampling/arithmetic.yaml", method, "{output_dir}/rs-prompts-train.jsonl")
        else:
            fit = fit_stage(f"recipes/{method}/arithmetic.yaml", method, prompts)
        stages += [fit, evaluate_stage(method, **CHECKABLE)]
    return {"output_dir": out, "seeds": seeds, "stages": stages}


GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "gspo", "cispo")
# GRPO with step rewards (benchmarks/prm_tables.py trains the PRMs, one per seed, first)
STEP_METHODS = {
    "grpo_verifier_steps": {"class_path": "lightning_rlhf.toyworld.step_verifier.ArithmeticStepVerifier"},
    "grpo_prm_steps": {"class_path": "lightning_rlhf.rewards.StepRewardSource",
                       "init_args": {"path": "runs/prm-tables/seed{seed}/prm", "step_separator": ".", "batch_size": 256}},
}
PPO_STEP_METHODS = {"ppo_verifier_steps": STEP_METHODS["grpo_verifier_steps"]}

# GRPO with PRIME's online implicit PRM (rewards.OnlineImplicitPRM): started from the SFT
# model, trained on every rollout with the exact-answer reward as its label; no step labels
EXACT_ANSWER = {"class_path": "lightning_rlhf.rewards.FunctionReward", "init_args": {"function": CHECKABLE["reward"]}}
ONLINE_PRM = {"class_path": "lightning_rlhf.rewards.OnlineImplicitPRM",
              "init_args": {"outcome": EXACT_ANSWER, "path": "builtin:arithmetic", "beta": 0.05,
                            "learning_rate": 2e-4}}  # PRIME's beta; twice the policy's rate, as PRIME
# method -> process_weight; 0: the same run with the outcome's leave-one-out advantage alone
ONLINE_PRM_METHODS = {"grpo_prm_online": 1.0, "grpo_prm_online_w0": 0.0}


def rlvr_report(paths: list[str], figure: str | None) -> str:
    """One table (and figure) of rlvr results run as several pipelines (methods split over
    processes): each method's row from whichever results file holds it."""
    header = ["method", "held-out accuracy", "KL to SFT (nats)", "length (tokens)", "fit wall time"]
    rows, points, baseline, capabilities = [], [], None, set()
    for path in paths:
        data = json.loads(Path(path).read_text())
        capabilities.add(data["cpu_capability"])
        summaries = data["summaries"]
        pipeline = parse_pipeline(rlvr_pipeline(str(Path(path).parent), data["seeds"], list(summaries)), path)
        seconds = _fit_seconds(data["stages"], pipeline)
        if baseline is None:
            sft = [r["reference"]["mean_reward"] for r in next(iter(summaries.values()))["reports"]]
            length = [r["reference"]["mean_length"] for r in next(iter(summaries.values()))["reports"]]
            rows.append(["SFT (`builtin:arithmetic`)", cell(sft, ".1f", percent=True), "0", cell(length, ".1f"), "-"])
            baseline = mean_interval(sft)
        for name, summary in summaries.items():
            rows.append(accuracy_row(name, summary, seconds[name]))
            f = summary["figures"]
            points.append((name, f["kl"], f["policy_mean_reward"]))
    text = markdown(header, rows)
    if figure:
        from lightning_rlhf.plots import Point, reward_vs_kl

        drawn = [Point(name, kl["mean"], acc["mean"], kl["half_width"], acc["half_width"]) for name, kl, acc in points]
        reward_vs_kl(drawn, figure, title="Checkable world: held-out accuracy bought for KL, 500 prompts",
                     note=f"{baseline.n} seeds, {', '.join(sorted(capabilities))} kernels; bars: 95% t-interval of the mean; "
                          "7680 sampled completions each",
                     baseline=Point("SFT", 0.0, baseline.mean, reward_err=baseline.half_width),
                     ylabel="held-out accuracy (exact answer)", percent=True, legend="lower right")
        text += f"\n\nwrote {figure}"
    return text


def cell(values: list[float], spec: str, percent: bool = False) -> str:
    return format_figure(mean_interval(values).as_dict(), spec, percent)


def method_row(name: str, summary: dict, seconds: list[float] | None = None) -> list[str]:
    """A method's row from its evaluation summary (``summarize_evaluations``: intervals already computed)."""
    f = summary["figures"]
    row = [name, format_figure(f["win_rate"], ".1f", percent=True), format_figure(f["kl"], ".2f"),
           format_figure(f["policy_mean_reward"], "+.3f"), format_figure(f["policy_mean_length"], ".1f")]
    return row + ([f"{sum(seconds) / len(seconds):.0f} s"] if seconds is not None else [])


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


FIGURES = {"win_rate": (".1f", True), "kl": (".2f", False), "policy_mean_reward": ("+.3f", False),
           "policy_mean_length": (".1f", False), "reference_mean_reward": ("+.3f", False),
           "reference_mean_length": (".1f", False)}


def summaries_of(path: str) -> dict[str, dict]:
    """A results file's evaluation summaries by method: a table's, or a pipeline's one."""
    data = json.loads(Path(path).read_text())
    return data["summaries"] if "summaries" in data else {data.get("policy_label", "policy"): data}


def pooled_intervals(inputs: list[dict]) -> dict[str, dict[str, Interval]]:
    """Per method (best-of-n apart: ``best_of_n_rows``) and figure: every input's per-seed
    values pooled into the interval a rerun with as many seeds is expected to land in."""
    pooled = {}
    for method in (m for m in inputs[0] if m != "best-of-n"):
        pooled[method] = {}
        for figure in FIGURES:
            per_input = [summary[method]["figures"][figure] for summary in inputs]
            pooled[method][figure] = rerun_interval([v for f in per_input for v in f["values"]], rerun_size=per_input[0]["n"])
    return pooled


def pooled_table(paths: list[str]) -> str:
    """The README's form: a row per method, each figure the pooled mean ± rerun interval."""
    inputs = [summaries_of(path) for path in paths]
    rows = [method_row(NAMES.get(method, method), {"figures": {f: interval.as_dict() for f, interval in figures.items()}})
            for method, figures in pooled_intervals(inputs).items()]
    for n, kl, win, reward in best_of_n_rows(inputs):
        rows.append([f"best-of-{n}", format_figure(win.as_dict(), ".1f", percent=True), f"{kl:.3f}", format_figure(reward.as_dict(), "+.3f"), "-"])
    return markdown(["method", "win rate vs SFT", "KL (nats)", "mean gold reward", "length (tokens)"], rows)


def best_of_n_rows(inputs: list[dict]) -> list[tuple[int, float, Interval, Interval]]:
    """Per n: the analytic KL and the pooled win rate and reward (rerun intervals) of best-of-n."""
    if "best-of-n" not in inputs[0]:
        return []
    per_seed = [report["best_of_n"]["rows"] for summary in inputs for report in summary["best-of-n"]["reports"]]
    seeds = len(inputs[0]["best-of-n"]["reports"])
    return [(row["n"], row["kl"], rerun_interval([rows[i]["win_rate"] for rows in per_seed], seeds),
             rerun_interval([rows[i]["mean_reward"] for rows in per_seed], seeds)) for i, row in enumerate(per_seed[0])]


def pooled_figure(paths: list[str], path: str) -> Path:
    """Reward against KL of every method, pooled means with rerun intervals on both axes;
    SFT as the baseline; best-of-n (when the results have it) as a curve at its analytic KL."""
    from lightning_rlhf.plots import Point, reward_vs_kl

    inputs = [summaries_of(p) for p in paths]
    pooled = pooled_intervals(inputs)
    first = next(iter(pooled.values()))["reference_mean_reward"]
    baseline = Point("SFT", 0.0, first.mean, reward_err=first.half_width)
    points = [Point(NAMES.get(m, m).split(" (")[0], f["kl"].mean, f["policy_mean_reward"].mean, f["kl"].half_width,
                    f["policy_mean_reward"].half_width) for m, f in pooled.items()]
    curve = None
    if best := best_of_n_rows(inputs):
        curve = (f"best-of-n from SFT (n = {', '.join(str(n) for n, *_ in best)})", [kl for _, kl, _, _ in best],
                 [reward.mean for *_, reward in best], [reward.half_width for *_, reward in best])
    paths_note = ", ".join(sorted({json.loads(Path(p).read_text()).get("cpu_capability", "?") for p in paths}))
    return reward_vs_kl(points, path, title="Toy world: gold reward bought for KL, 200 held-out prompts",
                        note=f"pooled over {first.n} seeds on {paths_note} kernel paths; bars: 95% interval of a 3-seed rerun's mean",
                        curve=curve, baseline=baseline)


def pooled(paths: list[str]) -> str:
    """Per method and figure: the pooled mean ± rerun interval, and each input's mean against it."""
    inputs = [summaries_of(path) for path in paths]
    lines = [f"pooled over {len(paths)} results ({', '.join(paths)}); "
             "interval: 95% prediction interval for the mean of a rerun with as many seeds"]
    outside = 0
    for method, figures in pooled_intervals(inputs).items():  # best-of-n's own rows: pooled_table
        lines.append(f"\n{method}")
        for figure, (spec, percent) in FIGURES.items():
            means = []
            for summary in inputs:
                mean = summary[method]["figures"][figure]["mean"]
                inside = mean in figures[figure]
                outside += not inside
                means.append(format_figure({"mean": mean, "half_width": 0, "n": 1}, spec, percent) + ("" if inside else " (outside)"))
            lines.append(f"  {figure:<22} {format_figure(figures[figure].as_dict(), spec, percent):<18} inputs: {', '.join(means)}")
    lines.append(f"\n{outside} input mean(s) outside the pooled rerun interval")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["objectives", "self-training", "rlvr", "rlvr-report", "pooled"])
    parser.add_argument("results", nargs="*", help="pooled: the results files to pool; rlvr-report: the rlvr results to join")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--methods", nargs="+", default=list(RLVR_METHODS), choices=[*RLVR_METHODS, *STEP_METHODS, *PPO_STEP_METHODS, *ONLINE_PRM_METHODS],
                        help="rlvr: the methods (grpo_prm_steps reads the PRMs benchmarks/prm_tables.py trains)")
    parser.add_argument("--best-of-n", default="2,4,8,16,32")
    parser.add_argument("--out", default=None, help="default: runs/tables/<table>")
    parser.add_argument("--figure", default=None, help="pooled, rlvr-report: also draw reward (accuracy) against KL to this PNG")
    args = parser.parse_args()
    if args.table == "rlvr-report":
        print(rlvr_report(args.results, args.figure))
        return
    if args.table == "pooled":
        if len(args.results) < 2:
            parser.error("pooled needs two or more results files")
        print(pooled(args.results))
        print(f"\n{pooled_table(args.results)}")
        if args.figure:
            print(f"\nwrote {pooled_figure(args.results, args.figure)}")
        return
    out = args.out or f"runs/tables/{args.table}"
    config = {"objectives": lambda: objectives_pipeline(out, args.seeds, args.objectives),
              "self-training": lambda: self_training_pipeline(out, args.seeds, args.best_of_n),
              "rlvr": lambda: rlvr_pipeline(out, args.seeds, args.methods)}[args.table]()
    pipeline = parse_pipeline(config, f"<{args.table} table>")
    started = time.perf_counter()
    records = run_pipeline(pipeline, print_fn=lambda line: print(line, flush=True))
    evaluations = {s.options["policy_label"]: summarize_evaluations(pipeline, s) for s in pipeline.stages if s.kind == "evaluate"}
    fit_seconds = _fit_seconds(records, pipeline)
    # Every evaluation of one seed samples the SFT model with the same seed: one value per seed.
    sft_reports = next(iter(evaluations.values()))["reports"]
    sft_reward, sft_length = [r["reference"]["mean_reward"] for r in sft_reports], [r["reference"]["mean_length"] for r in sft_reports]
    if args.table == "rlvr":
        header = ["method", "held-out accuracy", "KL to SFT (nats)", "length (tokens)", "fit wall time"]
        rows = [["SFT (`builtin:arithmetic`)", cell(sft_reward, ".1f", percent=True), "0", cell(sft_length, ".1f"), "-"]]
        rows += [accuracy_row(name, summary, fit_seconds[name]) for name, summary in evaluations.items()]
        _write_table(args.table, out, markdown(header, rows), pipeline, evaluations, records, started)
        return
    header = ["method", "win rate vs SFT", "KL (nats)", "mean gold reward", "length (tokens)"]
    if args.table == "self-training":
        header.append("fit wall time")
    rows = [["SFT (`builtin:toyworld`)", "50%", "0", cell(sft_reward, "+.3f"), cell(sft_length, ".1f")]
            + (["-"] if args.table == "self-training" else [])]
    for name, summary in evaluations.items():
        if name == "best-of-n":
            continue
        rows.append(method_row(NAMES.get(name, name), summary, fit_seconds.get(name) if args.table == "self-training" else None))
    if "best-of-n" in evaluations:
        reports = evaluations["best-of-n"]["reports"]
        for index, first in enumerate(reports[0]["best_of_n"]["rows"]):
            rows_n = [r["best_of_n"]["rows"][index] for r in reports]
            rows.append([f"best-of-{first['n']}", cell([r["win_rate"] for r in rows_n], ".1f", percent=True),
                         f"{first['kl']:.3f}", cell([r["mean_reward"] for r in rows_n], "+.3f"), "-", ""])
    _write_table(args.table, out, markdown(header, rows), pipeline, evaluations, records, started)


def accuracy_row(name: str, summary: dict, seconds: list[float]) -> list[str]:
    f = summary["figures"]
    return [name, format_figure(f["policy_mean_reward"], ".1f", percent=True), format_figure(f["kl"], ".2f"),
            format_figure(f["policy_mean_length"], ".1f"), f"{sum(seconds) / len(seconds):.0f} s"]


def _write_table(name: str, out: str, table: str, pipeline, evaluations: dict, records: list[dict], started: float) -> None:
    note = (f"{len(pipeline.seeds)} seeds ({', '.join(map(str, pipeline.seeds))}), mean ± 95% t-interval; "
            f"{cpu_capability()} kernels; {time.perf_counter() - started:.0f} s in all")
    print(f"\n{table}\n\n{note}")
    Path(out, f"{name}.md").write_text(f"{table}\n\n{note}\n")
    Path(out, f"{name}.json").write_text(json.dumps(
        {"cpu_capability": cpu_capability(), "seeds": pipeline.seeds, "summaries": evaluations, "stages": records}, indent=1) + "\n")


def _fit_seconds(records: list[dict], pipeline) -> dict[str, list[float]]:
    """Wall time of each method's fit stage per seed, by the run folder its stage names."""
    runs = {}
    for stage in pipeline.stages:
        if stage.kind == "fit":
            root = next(a for a in stage.options["args"] if a.startswith("--trainer.default_root_dir="))
            runs[stage.number] = Path(root.split("=", 1)[1]).name
    seconds: dict[str, list[float]] = {}
    for record in records:
        if record["stage"] == "fit":
            seconds.setdefault(runs[record["number"]], []).append(record["seconds"])
    return seconds


if __name__ == "__main__":
    main()
