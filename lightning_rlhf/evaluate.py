"""What ``lightning-rlhf evaluate`` measures (the command is ``commands.evaluate``): a policy
against a reference on held-out prompts.

Both models sample one completion per prompt (``--samples`` for more) with the same seed
and settings; a reward source scores every completion. Reported:

- mean reward of each model, and mean completion length in tokens (EOS counted);
- win rate of the policy: over the pairs (policy sample i, reference sample i) of the
  same prompt, ``mean(1[r_pi > r_ref] + 0.5 * 1[r_pi == r_ref])``;
- KL(pi || pi_ref), the Monte-Carlo estimate on the policy's own samples y ~ pi::

      KL ~= mean over samples of  sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]

  with both log-probabilities at temperature 1 on exactly the sampled tokens (EOS
  included). It is unbiased for the sequence-level KL when sampling is at temperature 1
  and top_p 1; under other settings it measures the divergence on those samples only
  and the report says so. It needs the two models to share a tokenizer.

With ``--best-of-n 2,4,16`` it also reports best-of-n from the reference: N = max(n)
further reference samples per prompt (seed + 1, independent of the reference's own
samples), the best of the first n by a selection reward (``--best-of-n-reward``, default
the evaluation reward), its evaluation reward, its win rate against the reference's
samples, and its KL ``log n - (n - 1) / n`` (see ``lightning_rlhf.best_of_n``).

With ``--judge`` a pairwise LLM judge (``rewards.judge``) also compares each pair of
samples: its win rate is the mean over pairs of P(policy sample better), both orders of
the two answers averaged, reported beside the reward's win rate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

EXAMPLES = 3


def win_rate(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> float:
    """Share of pairs the policy wins, ties counting one half.

    >>> win_rate([1.0, 0.0, 0.5], [0.0, 1.0, 0.5])  # win, loss, tie -> (1 + 0 + 0.5) / 3
    0.5
    """
    policy, reference = torch.as_tensor(policy_scores, dtype=torch.float64), torch.as_tensor(reference_scores, dtype=torch.float64)
    if policy.shape != reference.shape or policy.numel() == 0:
        raise ValueError(f"need two equal, non-empty lists of scores, got {tuple(policy.shape)} and {tuple(reference.shape)}")
    return float(((policy > reference).double() + 0.5 * (policy == reference).double()).mean())


def sequence_kl(policy_logps: Sequence[float], reference_logps: Sequence[float]) -> float:
    """mean_i [log pi(y_i) - log pi_ref(y_i)] over samples y_i ~ pi, each log-prob the
    sum over the sample's tokens: the Monte-Carlo estimate of KL(pi || pi_ref)."""
    policy, reference = torch.as_tensor(policy_logps, dtype=torch.float64), torch.as_tensor(reference_logps, dtype=torch.float64)
    if policy.shape != reference.shape or policy.numel() == 0:
        raise ValueError(f"need two equal, non-empty lists of log-probs, got {tuple(policy.shape)} and {tuple(reference.shape)}")
    return float((policy - reference).mean())


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


@dataclass
class ReferenceSide:
    """What an evaluation draws from the reference alone: its samples and their scores, and
    the best-of-n pool. Every policy compared with the same reference, prompts, settings
    and rewards shares it, so a pipeline evaluating several methods samples it once (the
    same seed gives the same samples, so sharing changes no number)."""

    samples: list
    scores: list[float]
    proxy_scores: list[float] | None
    best_of_n: dict | None


def sample_reference(
    reference, reference_tokenizer, prompts: list[str], reward, settings: dict, columns: list[dict],
    proxy_reward=None, best_of_n: Sequence[int] = (), selection_reward=None,
) -> ReferenceSide:
    from lightning_rlhf.generation import sample

    samples = [s for group in sample(reference, reference_tokenizer, prompts, **settings, progress="evaluate: reference") for s in group]
    sample_prompts, sample_columns = _per_sample(prompts, columns, settings["n"])
    texts = [s.text for s in samples]
    scores = reward(sample_prompts, texts, sample_columns).tolist()
    proxy_scores = None if proxy_reward is None else proxy_reward(sample_prompts, texts, sample_columns).tolist()
    pool = None
    if best_of_n:
        from lightning_rlhf.best_of_n import scores_matrix

        pool = evaluate_best_of_n(
            reference, reference_tokenizer, prompts, reward, selection_reward or reward, best_of_n,
            scores_matrix(scores, len(prompts)), {**settings, "seed": settings["seed"] + 1}, columns, proxy_reward,
        )
    return ReferenceSide(samples, scores, proxy_scores, pool)


def _per_sample(prompts: list[str], columns: list[dict], samples: int) -> tuple[list[str], list[dict]]:
    return [p for p in prompts for _ in range(samples)], [row for row in columns for _ in range(samples)]


def evaluate_models(
    policy, policy_tokenizer, reference, reference_tokenizer, prompts: list[str], reward,
    samples: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 48,
    batch_size: int = 64, seed: int = 0, best_of_n: Sequence[int] = (), selection_reward=None,
    columns: list[dict] | None = None, judge=None, proxy_reward=None, reference_side: ReferenceSide | None = None,
    engine: str = "hf",
) -> dict:
    """Sample, score and compare; returns the report as a plain dict (see module docstring).

    ``best_of_n``: the n of best-of-n rows from the reference, selected by
    ``selection_reward`` (None: ``reward``). ``columns``: each prompt row's other columns,
    for rewards that read them (a reference ``answer``). ``judge``: a ``PairwiseJudge`` whose
    win rate is reported too. ``proxy_reward``: a second reward (the reward model a policy
    was trained against) whose means are reported beside the evaluation reward's, so
    over-optimisation shows. ``reference_side``: the reference's part, already drawn by
    :func:`sample_reference` with these same arguments. ``engine``: what samples
    (``lightning_rlhf.generation.ENGINES``)."""
    from lightning_rlhf.generation import sample, sequence_logps

    settings = dict(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                    engine=engine)
    columns = columns or [{} for _ in prompts]
    if reference_side is None:
        reference_side = sample_reference(reference, reference_tokenizer, prompts, reward, settings, columns,
                                          proxy_reward, best_of_n, selection_reward)
    policy_samples = [s for group in sample(policy, policy_tokenizer, prompts, **settings, progress="evaluate: policy") for s in group]
    reference_samples, reference_scores = reference_side.samples, reference_side.scores
    sample_prompts, sample_columns = _per_sample(prompts, columns, samples)
    policy_scores = reward(sample_prompts, [s.text for s in policy_samples], sample_columns).tolist()

    kl = None
    if same_vocabulary(policy_tokenizer, reference_tokenizer):
        tokens = [s.token_ids for s in policy_samples]
        kl = sequence_kl(
            sequence_logps(policy, policy_tokenizer, sample_prompts, tokens, batch_size).tolist(),
            sequence_logps(reference, policy_tokenizer, sample_prompts, tokens, batch_size).tolist(),
        )
    report = {
        "prompts": len(prompts),
        "samples_per_prompt": samples,
        "policy": {
            "mean_reward": mean(policy_scores),
            "mean_length": mean([s.length for s in policy_samples]),
            "finished": mean([float(s.finished) for s in policy_samples]),
        },
        "reference": {
            "mean_reward": mean(reference_scores),
            "mean_length": mean([s.length for s in reference_samples]),
            "finished": mean([float(s.finished) for s in reference_samples]),
        },
        "win_rate": win_rate(policy_scores, reference_scores),
        "kl": kl,
        "kl_note": None if kl is None or (temperature == 1.0 and top_p == 1.0)
        else "samples not drawn at temperature 1 / top_p 1: KL is measured on those samples, not the model's own",
        "sampling": {k: v for k, v in settings.items() if k != "batch_size"},
        "examples": [
            {
                "prompt": sample_prompts[i],
                "policy": policy_samples[i].text,
                "policy_reward": policy_scores[i],
                "reference": reference_samples[i].text,
                "reference_reward": reference_scores[i],
            }
            for i in range(min(EXAMPLES, len(sample_prompts)))
        ],
    }
    if proxy_reward is not None:
        report["policy"]["mean_proxy_reward"] = mean(proxy_reward(sample_prompts, [s.text for s in policy_samples], sample_columns).tolist())
        report["reference"]["mean_proxy_reward"] = mean(reference_side.proxy_scores)
    if judge is not None:
        preferred = judge.probability_first_better(sample_prompts, [s.text for s in policy_samples],
                                                   [s.text for s in reference_samples])
        report["judge"] = {"win_rate": float(preferred.double().mean()), "agreement_with_reward": judge_agreement(
            preferred.tolist(), policy_scores, reference_scores)}
    if reference_side.best_of_n is not None:
        report["best_of_n"] = dict(reference_side.best_of_n)
    return report


def judge_agreement(preferred: Sequence[float], policy_scores: Sequence[float], reference_scores: Sequence[float]) -> float | None:
    """Share of the pairs the reward does not tie on where the judge (P > 0.5) picks the
    one the reward scores higher; None when the reward ties on every pair."""
    decided = [(p > 0.5) == (a > b) for p, a, b in zip(preferred, policy_scores, reference_scores) if a != b]
    return sum(decided) / len(decided) if decided else None


def evaluate_best_of_n(model, tokenizer, prompts: list[str], reward, selection_reward, ns: Sequence[int],
                       reference_scores: torch.Tensor, settings: dict, columns: list[dict], proxy_reward=None) -> dict:
    """Best-of-n rows from ``max(ns)`` fresh samples per prompt of ``model`` (the reference);
    with ``proxy_reward``, each row also gives the proxy's mean score of the picked samples."""
    from lightning_rlhf.best_of_n import best_of_n_choice, best_of_n_rows, scores_matrix
    from lightning_rlhf.generation import sample

    started = time.perf_counter()
    n_max = max(ns)
    texts = [s.text for group in sample(model, tokenizer, prompts, **{**settings, "n": n_max}, progress=f"best-of-{n_max}: reference") for s in group]
    pool_prompts, pool_columns = _per_sample(prompts, columns, n_max)

    def scores(source):
        return scores_matrix(source(pool_prompts, texts, pool_columns).tolist(), len(prompts))

    evaluation = scores(reward)
    selection = evaluation if selection_reward is reward else scores(selection_reward)
    rows = best_of_n_rows(selection, evaluation, reference_scores, ns)
    if proxy_reward is not None:
        proxy = selection if proxy_reward is selection_reward else scores(proxy_reward)
        for row in rows:
            picked = best_of_n_choice(selection, row["n"])
            row["mean_proxy_reward"] = float(proxy.gather(1, picked[:, None]).mean())
    return {
        "rows": rows,
        "samples_per_prompt": n_max,
        "seed": settings["seed"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def format_report(report: dict, policy_name: str = "policy", reference_name: str = "reference") -> str:
    """The report as a small terminal table, then the examples."""
    kl = "n/a (different tokenizers)" if report["kl"] is None else f"{report['kl']:.3f} nats"
    rows = [
        ("", reference_name, policy_name),
        ("mean reward", f"{report['reference']['mean_reward']:+.3f}", f"{report['policy']['mean_reward']:+.3f}"),
    ]
    if "mean_proxy_reward" in report["policy"]:
        rows.append(("mean proxy reward", f"{report['reference']['mean_proxy_reward']:+.3f}", f"{report['policy']['mean_proxy_reward']:+.3f}"))
    rows += [
        ("mean length (tokens)", f"{report['reference']['mean_length']:.1f}", f"{report['policy']['mean_length']:.1f}"),
        ("win rate vs reference", "-", f"{report['win_rate']:.1%}"),
        ("KL(policy || reference)", "-", kl),
    ]
    if report.get("judge"):
        rows.append(("judge's win rate vs reference", "-", f"{report['judge']['win_rate']:.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{report['prompts']} prompts x {report['samples_per_prompt']} sample(s)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if report.get("best_of_n"):
        lines += ["", *format_best_of_n(report["best_of_n"], reference_name)]
    for example in report["examples"]:
        lines.append(f"\n  {example['prompt']!r}")
        lines.append(f"    {reference_name} ({example['reference_reward']:+.2f}):{example['reference']}")
        lines.append(f"    {policy_name} ({example['policy_reward']:+.2f}):{example['policy']}")
    return "\n".join(lines)


def format_best_of_n(best_of_n: dict, reference_name: str = "reference") -> list[str]:
    selection = best_of_n.get("selection_reward")
    lines = [f"best of n {reference_name} samples" + (f", selected by {selection}" if selection else "") + ":"]
    rows = [("n", "KL (nats)", "mean reward", f"win rate vs {reference_name}")]
    rows += [(str(r["n"]), f"{r['kl']:.3f}", f"{r['mean_reward']:+.3f}", f"{r['win_rate']:.1%}") for r in best_of_n["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return lines + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def log_to_wandb(report: dict, project: str, name: str | None, config: dict, figure: Path | None = None,
                 save_dir: Path | None = None) -> Path:
    """One W&B run with the metrics as summary values, the examples as a table and the
    figure as an image, kept under ``save_dir`` (default: W&B's own choice);
    ``WANDB_MODE=offline`` is honoured by wandb itself. Returns the run's log file."""
    import wandb

    # A run of its own even when the process holds one open (a training run's WandbLogger
    # in the same process): W&B hands back that run otherwise, and the report lands in it.
    run = wandb.init(project=project, name=name, job_type="evaluate", config=config, dir=save_dir, reinit="create_new")
    metrics = {
        "eval/policy_reward": report["policy"]["mean_reward"],
        "eval/reference_reward": report["reference"]["mean_reward"],
        "eval/win_rate": report["win_rate"],
        "eval/policy_length": report["policy"]["mean_length"],
        "eval/reference_length": report["reference"]["mean_length"],
    }
    if "mean_proxy_reward" in report["policy"]:
        metrics["eval/policy_proxy_reward"] = report["policy"]["mean_proxy_reward"]
        metrics["eval/reference_proxy_reward"] = report["reference"]["mean_proxy_reward"]
    if report["kl"] is not None:
        metrics["eval/kl"] = report["kl"]
    if report.get("judge"):
        metrics["eval/judge_win_rate"] = report["judge"]["win_rate"]
    for row in (report.get("best_of_n") or {}).get("rows", []):
        for key in ("mean_reward", "win_rate", "kl"):
            metrics[f"eval/best_of_{row['n']}/{key}"] = row[key]
    run.log(metrics)
    columns = ["prompt", "policy", "policy_reward", "reference", "reference_reward"]
    run.log({"eval/examples": wandb.Table(columns=columns, data=[[e[c] for c in columns] for e in report["examples"]])})
    if figure is not None:
        run.log({"eval/reward_vs_kl": wandb.Image(str(figure))})
    log_file = Path(run.settings.sync_file)
    run.finish()
    return log_file


def report_figure(report: dict, path: Path, policy_label: str, reference_label: str) -> Path:
    """The report drawn as the pipeline draws its methods: reward against KL, best-of-n as a
    curve, the proxy reward in a second panel when there is one."""
    from lightning_rlhf.cpu import cpu_capability
    from lightning_rlhf.pipeline_report import frontier_figure, summarize_reports

    summary = summarize_reports([report], [report["sampling"]["seed"]], reference_label, policy_label)
    return frontier_figure([summary], path, note=f"{cpu_capability()} kernels; one sampling seed ({report['sampling']['seed']})")
