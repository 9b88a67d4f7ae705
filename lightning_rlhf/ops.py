"""Pure tensor maths shared by the modules and the plugins. No models, no loops."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def completion_index(completion_mask: Tensor) -> Tensor:
    """Flat indices into ``[N * (T-1)]`` of the positions whose *next* token is a
    completion token: the only positions at which the language-model head is needed.

    Computed by the collator on the CPU, so that the training step can gather these
    positions on the accelerator without a host-device synchronisation.
    """
    return completion_mask[:, 1:].reshape(-1).nonzero().squeeze(-1)


def logit_multiplier(config) -> float:
    """What a model's forward multiplies its logits by before the softmax it samples from:
    Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``, 1 for everything else."""
    multiplier = 1.0
    if isinstance(getattr(config, "logit_scale", None), (int, float)):
        multiplier *= float(config.logit_scale)
    if isinstance(getattr(config, "logits_scaling", None), (int, float)):
        multiplier /= float(config.logits_scaling)
    return multiplier


def _chunk_logps(
    hidden: Tensor, targets: Tensor, lm_head: Callable[[Tensor], Tensor], softcap: float | None, temperature: float,
    with_entropy: bool,
) -> tuple[Tensor, ...]:
    """One chunk: the head's float32 logits ``[chunk, vocab]``, capped, at the temperature;
    the targets' log-probs and, ``with_entropy``, each position's entropy."""
    logits = lm_head(hidden).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if temperature != 1.0:  # dividing by 1 changes no value, only adds a [chunk, vocab] tensor
        logits = logits / temperature
    if not with_entropy:  # no [chunk, vocab] log-softmax: the target's logit less the normaliser
        return (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1),)
    logps = torch.log_softmax(logits, dim=-1)
    token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return token_logps, -(logps.exp() * logps).sum(-1)


def _chunked_logps(
    hidden: Tensor,
    input_ids: Tensor,
    index: Tensor,
    lm_head: Callable[[Tensor], Tensor],
    chunk_size: int,
    logit_softcap: float | None,
    hidden_index: Tensor | None,
    temperature: float,
    with_entropy: bool,
) -> list[Tensor]:
    """The one chunked loop under :func:`selective_logps` and :func:`selective_logps_entropy`:
    ``[token_logps]`` or ``[token_logps, entropy]``, each ``[N, T-1]``, zero outside ``index``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n, t = input_ids.shape
    h = hidden.shape[-1]
    if hidden_index is None:
        flat_hidden = hidden[:, :-1].reshape(-1, h).index_select(0, index)
    else:
        flat_hidden = hidden.reshape(-1, h).index_select(0, hidden_index)
    flat_targets = input_ids[:, 1:].reshape(-1).index_select(0, index)
    chunks = []
    for start in range(0, flat_hidden.shape[0], chunk_size):
        args = (flat_hidden[start : start + chunk_size], flat_targets[start : start + chunk_size], lm_head,
                logit_softcap, temperature, with_entropy)
        if torch.is_grad_enabled() and args[0].requires_grad:
            chunks.append(checkpoint(_chunk_logps, *args, use_reentrant=False))
        else:
            chunks.append(_chunk_logps(*args))
    outputs = []
    for k in range(2 if with_entropy else 1):
        flat = torch.cat([chunk[k] for chunk in chunks]) if chunks else flat_hidden.new_zeros(0, dtype=torch.float32)
        out = torch.zeros(n * (t - 1), dtype=torch.float32, device=hidden.device)
        outputs.append(out.index_copy(0, index, flat).view(n, t - 1))
    return outputs


def selective_logps(
    hidden: Tensor,
    input_ids: Tensor,
    index: Tensor,
    lm_head: Callable[[Tensor], Tensor],
    chunk_size: int = 1024,
    logit_softcap: float | None = None,
    hidden_index: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token log-probabilities of the targets at the positions in ``index``, under
    ``softmax(logits / temperature)``.

    ``hidden`` is the final hidden state ``[N, T, H]``; ``index`` as from
    :func:`completion_index`. The head is applied to ``chunk_size`` positions at a time
    in float32, and under autograd each chunk is recomputed in the backward pass, so no
    ``[positions, vocab]`` tensor outlives its chunk. Returns ``[N, T-1]`` (the shape of
    ``input_ids`` less one column), zero outside ``index``.

    ``hidden_index``: where the hidden states come from another layout than
    ``input_ids`` (``data.shared_prompt``), the flat index into ``hidden``'s rows and
    positions of the state that predicts each target of ``index``, in its order.
    """
    (token_logps,) = _chunked_logps(hidden, input_ids, index, lm_head, chunk_size, logit_softcap, hidden_index,
                                    temperature, with_entropy=False)
    return token_logps


def naive_logps(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """The textbook computation from full logits ``[N, T, V]``; the reference that
    :func:`selective_logps` is tested against."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return token_logps * completion_mask[:, 1:]


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is set (0 where nothing is)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    mean = masked_mean(values, mask)
    centered_sq = (values - mean) ** 2
    var = masked_mean(centered_sq, mask)
    if unbiased:
        count = mask.sum().to(values.dtype)
        var = var * count / (count - 1).clamp(min=1)
    return var


# Sums a tensor over the processes of a data-parallel run (every process calls it).
SumOverProcesses = Callable[[Tensor], Tensor]


def masked_whiten(
    values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, sum_over_processes: SumOverProcesses | None = None
) -> Tensor:
    """Normalise to unit variance (and zero mean if ``shift_mean``) over masked entries;
    with ``sum_over_processes``, over the masked entries of every process, so that a
    data-parallel run whitens as one process holding the whole batch would."""
    if sum_over_processes is not None:
        m = mask.to(values.dtype)
        total, count = sum_over_processes(torch.stack([(values * m).sum(), m.sum()]))
        mean = total / count.clamp(min=1)
        var = sum_over_processes(((values - mean) ** 2 * m).sum()) / (count - 1).clamp(min=1)
    else:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def sigmoid_preference_loss(logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``-(1-ε) log σ(x) - ε log σ(-x)``, per element: Bradley-Terry with label noise ε."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def preference_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor, chosen_logps: Tensor, rejected_logps: Tensor,
                       correct: Tensor | None = None) -> dict[str, Tensor]:
    """What every pairwise objective logs, under TRL's names (detached batch means): the
    rewards it gives the chosen and rejected answers, how often the chosen one is ahead
    (``correct``: where the objective ranks the pair by something else than this margin),
    the margin, and the answers' summed log-probs."""
    margins = chosen_rewards - rejected_rewards
    correct = margins > 0 if correct is None else correct
    return {
        "rewards/chosen": chosen_rewards.detach().mean(),
        "rewards/rejected": rejected_rewards.detach().mean(),
        "rewards/accuracies": correct.detach().float().mean(),
        "rewards/margins": margins.detach().mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


# -- online RL (PPO) ------------------------------------------------------------------------


def selective_logps_entropy(
    hidden: Tensor,
    input_ids: Tensor,
    index: Tensor,
    lm_head: Callable[[Tensor], Tensor],
    chunk_size: int = 1024,
    logit_softcap: float | None = None,
    temperature: float = 1.0,
    hidden_index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`selective_logps` plus the entropy of each position's next-token distribution,
    ``H_t = -sum_v p_v log p_v`` with ``p = softmax(logits / T)``.

    The same chunked loop: the ``[chunk, vocab]`` softmax lives only inside its chunk.
    Returns ``(token_logps, entropy)``, each ``[N, T-1]``, zero outside ``index``.
    """
    token_logps, entropy = _chunked_logps(hidden, input_ids, index, lm_head, chunk_size, logit_softcap, hidden_index,
                                          temperature, with_entropy=True)
    return token_logps, entropy


def kl_estimate(logps: Tensor, reference_logps: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman, "Approximating
    KL divergence", 2020). With ``log r = log pi_ref(y_t) - log pi(y_t)``:

    - ``k1 = -log r = log pi - log pi_ref``: unbiased, high variance, can be negative;
    - ``k2 = (log r)^2 / 2``: biased, low variance, never negative;
    - ``k3 = (r - 1) - log r``: unbiased, low variance, never negative.

    >>> kl_estimate(torch.tensor([-1.0]), torch.tensor([-2.0]), "k3")  # e^-1 - 1 + 1
    tensor([0.3679])
    """
    log_ratio = reference_logps - logps
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


def generalized_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    ``rewards``, ``values`` and ``mask`` are ``[N, T]``; ``mask`` marks each sequence's
    actions (its completion tokens, one contiguous run). The episode ends after the
    last action, so the value after it is 0:

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t            (the value target)

    Returns ``(advantages, returns)``, zero outside ``mask``.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    n, t = values.shape
    advantages = torch.zeros_like(values)
    next_value = values.new_zeros(n)
    next_advantage = values.new_zeros(n)
    for step in reversed(range(t)):
        delta = rewards[:, step] + gamma * next_value - values[:, step]
        advantage = (delta + gamma * lam * next_advantage) * mask[:, step]
        advantages[:, step] = advantage
        # A masked position (padding after the end, or prompt) passes nothing back.
        next_value = values[:, step] * mask[:, step]
        next_advantage = advantage
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate, per token (Schulman et al. 2017, eq. 7), as a loss:

        ratio = exp(log pi - log pi_old)
        L     = max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip))

    Returns ``(loss, clipped)``: the per-token loss and where the clipped branch was
    taken (for the clip fraction).
    """
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped)


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss, per token (as in OpenAI baselines and Huang et al. 2024):

        V_clip = old_V + clip(V - old_V, -clip, clip)
        L      = 0.5 * max((V - R)^2, (V_clip - R)^2)

    Returns ``(loss, clipped)``.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), (clipped_loss > unclipped_loss)
