"""The tests' one fake plugin context: a ctx that returns log-probs chosen by hand, so a loss
can be checked against arithmetic."""

from __future__ import annotations

import torch

from lightning_rlhf.algorithm import SequenceLogps


def token_logps(rows: list[list[float]]) -> SequenceLogps:
    """SequenceLogps whose row i has exactly the per-token log-probs ``rows[i]`` (right-padded)."""
    width = max(len(r) for r in rows)
    values = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        values[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return SequenceLogps(values, mask)


class GivenLogps:
    """``policy_logps`` returns the given rows (as a leaf with grad); ``reference_logps``
    the given reference rows, or fails the test when the plugin should not ask."""

    def __init__(self, policy: list[list[float]], reference: list[list[float]] | None = None):
        self.policy = token_logps(policy)
        self.policy.token_logps.requires_grad_(True)
        self.reference = None if reference is None else token_logps(reference)
        self.calls = {"policy": 0, "reference": 0}

    def policy_logps(self, batch, **settings):
        self.calls["policy"] += 1
        return self.policy

    def reference_logps(self, batch, **settings):
        self.calls["reference"] += 1
        assert self.reference is not None, "a reference-free loss asked for reference log-probs"
        return SequenceLogps(self.reference.token_logps.detach(), self.reference.mask)

    @property
    def grad(self) -> torch.Tensor:
        return self.policy.token_logps.grad
