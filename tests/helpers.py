"""Small test doubles shared by the loss tests."""

import torch

from lightning_rlhf.algorithm import SequenceLogps


def logps_from_sums(sums: list[float], length: int = 2) -> SequenceLogps:
    """SequenceLogps whose rows sum to ``sums``, spread evenly over ``length`` tokens."""
    values = torch.tensor(sums, dtype=torch.float32).unsqueeze(-1).repeat(1, length) / length
    return SequenceLogps(values, torch.ones(len(sums), length, dtype=torch.bool))


class FixedContext:
    """A ctx that returns given log-probs, so a loss can be checked against hand arithmetic."""

    def __init__(self, policy: SequenceLogps, reference: SequenceLogps | None = None):
        self.policy, self.reference = policy, reference
        self.policy.token_logps.requires_grad_(True)

    def policy_logps(self, batch):
        return self.policy

    def reference_logps(self, batch):
        assert self.reference is not None, "reference requested by a reference-free loss"
        return self.reference
