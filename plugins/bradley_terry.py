"""Bradley-Terry reward-model loss, with Llama 2's margins and optional reward centering."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.algorithm import RewardContext

# Llama 2 (Touvron et al. 2023, arXiv:2307.09288), Table 27: margin per preference rating.
_LLAMA2_RATINGS = ("significantly better", "better", "slightly better", "negligibly better / unsure")
MARGIN_PRESETS: dict[str, dict[str, float]] = {
    "llama2-small": dict(zip(_LLAMA2_RATINGS, (1.0, 2 / 3, 1 / 3, 0.0), strict=True)),
    "llama2-large": dict(zip(_LLAMA2_RATINGS, (3.0, 2.0, 1.0, 0.0), strict=True)),
}
# Either half of Llama 2's last label names the same rating.
_ALIASES = {"negligibly better": "negligibly better / unsure", "unsure": "negligibly better / unsure"}


def normalize_rating(rating: str) -> str:
    """``"Slightly_Better"`` -> ``"slightly better"``: case, ``_``/``-`` and spacing ignored."""
    text = re.sub(r"[\s_\-]+", " ", str(rating).strip().lower())
    text = re.sub(r"\s*/\s*", " / ", text)
    return _ALIASES.get(text, text)


@register_algorithm("bradley_terry")
class BradleyTerry(Algorithm):
    """Bradley-Terry reward loss -log sigmoid(r_chosen - r_rejected - margin), optional centering.

    Per pair (InstructGPT eq. 1 for K = 2; Llama 2 eq. 2 with the margin ``m``)::

        L = -log sigmoid(r(x, y_c) - r(x, y_r) - m)  +  c * (r(x, y_c) + r(x, y_r))^2

    averaged over the batch's pairs. ``m`` is the row's ``margin`` field, or its
    ``rating`` mapped through ``margin_table`` (Llama 2 Table 27 ships as the presets
    ``llama2-small``: 1, 2/3, 1/3, 0 and ``llama2-large``: 3, 2, 1, 0 for "significantly
    better", "better", "slightly better", "negligibly better / unsure"); a pair with
    neither has ``m = 0``. The second term (Eisenstein et al. 2023, arXiv:2312.09244)
    pins rewards near zero: the loss only sees differences, so without it the offset of
    the rewards drifts freely, which matters once rewards from several models are mixed.
    """

    stage = "reward"
    data = "preference"

    def __init__(self, margin_table: str | dict[str, float] | None = None, use_margin: bool = True, centering: float = 0.0):
        """
        Args:
            margin_table: read margins from each pair's ``rating`` through this table: a
                preset (``llama2-small``, ``llama2-large``) or a ``{rating: margin}``
                mapping. Ratings match ignoring case, ``_``/``-`` and spacing; an unknown
                rating is an error
            use_margin: without a margin_table, subtract the data's ``margin`` field where
                the batch has one; false trains plain Bradley-Terry
            centering: weight ``c`` of the auxiliary loss ``c * mean((r_c + r_r)^2)``
                (Eisenstein et al. use 0.01); 0 turns it off
        """
        if isinstance(margin_table, str) and margin_table not in MARGIN_PRESETS:
            raise ValueError(f"unknown margin_table preset {margin_table!r}; presets are {sorted(MARGIN_PRESETS)}")
        if centering < 0:
            raise ValueError(f"centering must be >= 0, got {centering}")
        self.margin_table, self.use_margin, self.centering = margin_table, use_margin, centering
        table = MARGIN_PRESETS[margin_table] if isinstance(margin_table, str) else (margin_table or {})
        self._table = {normalize_rating(k): float(v) for k, v in table.items()}

    def margins(self, batch: dict, like: torch.Tensor) -> torch.Tensor:
        """The margin ``m`` of each pair, ``[B]``, on ``like``'s device."""
        if self.margin_table is not None:
            ratings = batch.get("rating") or [None] * like.shape[0]
            return torch.tensor([self._rating_margin(r) for r in ratings], dtype=like.dtype).to(like.device)
        if self.use_margin and "margin" in batch:
            return batch["margin"].to(like.dtype)
        return torch.zeros_like(like)

    def _rating_margin(self, rating: str | None) -> float:
        if rating is None:
            return 0.0
        key = normalize_rating(rating)
        if key not in self._table:
            raise ValueError(f"rating {rating!r} is not in the margin table; known ratings: {sorted(self._table)}")
        return self._table[key]

    def loss(self, ctx: RewardContext, batch) -> LossOutput:
        chosen, rejected = ctx.rewards(batch).chunk(2)  # [B] each: chosen rows come first
        margin = self.margins(batch, chosen)
        preference_loss = -F.logsigmoid(chosen - rejected - margin).mean()
        centering_term = ((chosen + rejected) ** 2).mean()
        loss = preference_loss + self.centering * centering_term if self.centering else preference_loss
        return LossOutput(
            loss,
            {
                "rewards/chosen": chosen.detach().mean(),
                "rewards/rejected": rejected.detach().mean(),
                "target_margin": margin.detach().mean(),
                "preference_loss": preference_loss.detach(),
                "centering_term": centering_term.detach(),
            },
        )
