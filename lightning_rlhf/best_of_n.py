"""Best-of-n sampling, the inference-time baseline every trained policy is compared with.

Draw n completions of a prompt from the reference policy and answer with the one a
*selection* reward scores highest (the proxy a trained policy would be optimised
against); score that answer with the *evaluation* reward (the gold one). Nothing is
trained, so it shows what sampling alone buys. Its KL to the reference depends on n
alone (Stiennon et al. 2020; Gao et al. 2023, "Scaling Laws for Reward Model
Overoptimization", section 2):

    KL(best-of-n || reference) = log n - (n - 1) / n

exact when the selection reward never ties, an upper bound otherwise (Beirami et al.
2024, arXiv:2401.01879). A trained policy at KL k can then be set beside best-of-n at
the n whose KL is k.

The samples of one prompt are shared across the n asked for: best-of-n for n < N looks
at the first n of the N drawn, so the rows of a table differ only by n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def best_of_n_kl(n: int) -> float:
    """``log n - (n - 1) / n`` nats.

    >>> round(best_of_n_kl(2), 5)  # log 2 - 1/2
    0.19315
    >>> best_of_n_kl(1)
    0.0
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_choice(selection_scores: Tensor, n: int) -> Tensor:
    """``[P]``: for each prompt (row of ``selection_scores [P, N]``), the index of the
    highest-scoring of its first ``n`` samples; among equal scores, the first."""
    if not 1 <= n <= selection_scores.shape[1]:
        raise ValueError(f"n must be in [1, {selection_scores.shape[1]}] (samples drawn per prompt), got {n}")
    return selection_scores[:, :n].argmax(dim=1)  # argmax returns the first of equal maxima


def best_of_n_rows(
    selection_scores: Tensor, evaluation_scores: Tensor, reference_scores: Tensor, ns: Sequence[int]
) -> list[dict]:
    """One row per n: the evaluation reward of the best-of-n answers, their win rate against
    the reference's own samples, and the KL formula.

    ``selection_scores`` and ``evaluation_scores`` are ``[P, N]`` over the same N samples
    per prompt; ``reference_scores [P, S]`` are the evaluation rewards of S further
    reference samples per prompt. The win rate pairs each prompt's best-of-n answer with
    each of its S reference samples, ties counting one half.
    """
    if selection_scores.shape != evaluation_scores.shape or reference_scores.shape[0] != selection_scores.shape[0]:
        raise ValueError(
            f"scores disagree in shape: selection {tuple(selection_scores.shape)}, evaluation "
            f"{tuple(evaluation_scores.shape)}, reference {tuple(reference_scores.shape)}"
        )
    rows = []
    for n in ns:
        choice = best_of_n_choice(selection_scores, n).unsqueeze(1)
        chosen = evaluation_scores.double().gather(1, choice)  # [P, 1]
        reference = reference_scores.double()
        wins = (chosen > reference).double() + 0.5 * (chosen == reference).double()  # [P, S]
        rows.append({
            "n": n,
            "kl": best_of_n_kl(n),
            "mean_reward": float(chosen.mean()),
            "win_rate": float(wins.mean()),
            "mean_selection_reward": float(selection_scores.double().gather(1, choice).mean()),
        })
    return rows


def parse_ns(text: str) -> list[int]:
    """``"2,4,16"`` -> ``[2, 4, 16]`` (sorted, each >= 1)."""
    try:
        ns = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"expected comma-separated integers like 2,4,16, got {text!r}") from None
    if not ns or ns[0] < 1:
        raise ValueError(f"best-of-n needs integers >= 1, got {text!r}")
    return ns


def scores_matrix(values: Sequence[float], prompts: int) -> Tensor:
    """A flat list of per-sample scores, prompt-major, as ``[prompts, samples]``."""
    return torch.as_tensor(list(values), dtype=torch.float64).view(prompts, -1)
