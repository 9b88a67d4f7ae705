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


def _token_logps(hidden: Tensor, targets: Tensor, lm_head: Callable[[Tensor], Tensor], softcap: float | None) -> Tensor:
    logits = lm_head(hidden).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def selective_logps(
    hidden: Tensor,
    input_ids: Tensor,
    index: Tensor,
    lm_head: Callable[[Tensor], Tensor],
    chunk_size: int = 1024,
    logit_softcap: float | None = None,
) -> Tensor:
    """Per-token log-probabilities of the targets at the positions in ``index``.

    ``hidden`` is the final hidden state ``[N, T, H]``; ``index`` as from
    :func:`completion_index`. The head is applied to ``chunk_size`` positions at a time
    in float32, and under autograd each chunk is recomputed in the backward pass, so no
    ``[positions, vocab]`` tensor outlives its chunk. Returns ``[N, T-1]``, zero outside
    ``index``.
    """
    n, t, h = hidden.shape
    flat_hidden = hidden[:, :-1].reshape(-1, h).index_select(0, index)
    flat_targets = input_ids[:, 1:].reshape(-1).index_select(0, index)
    pieces = []
    for start in range(0, flat_hidden.shape[0], chunk_size):
        hidden_chunk = flat_hidden[start : start + chunk_size]
        target_chunk = flat_targets[start : start + chunk_size]
        if torch.is_grad_enabled() and hidden_chunk.requires_grad:
            pieces.append(
                checkpoint(_token_logps, hidden_chunk, target_chunk, lm_head, logit_softcap, use_reentrant=False)
            )
        else:
            pieces.append(_token_logps(hidden_chunk, target_chunk, lm_head, logit_softcap))
    flat = torch.cat(pieces) if pieces else flat_hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(n * (t - 1), dtype=torch.float32, device=hidden.device)
    return out.index_copy(0, index, flat).view(n, t - 1)


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


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise to unit variance (and zero mean if ``shift_mean``) over masked entries."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def sigmoid_preference_loss(logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``-(1-ε) log σ(x) - ε log σ(-x)``, per element: Bradley-Terry with label noise ε."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
