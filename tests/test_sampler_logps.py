"""``online.sampler_logps``: the engine's log-probabilities of the tokens it drew stand in for
a policy forward at rollout time (the GRPO family's KL in the reward and pi_old)."""

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.online import OnlineSettings
from lightning_rlhf.modules.online_policy import OnlinePolicyModule
from lightning_rlhf.rollout import Rollout, concat_rollouts


@pytest.mark.parametrize("engine", ["hf", "decode"])
def test_the_engines_log_probs_are_the_forwards(engine):
    torch.manual_seed(0)
    module = OnlinePolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("rloo"),
                                online=OnlineSettings(engine=engine, sampler_logps=True, generation_batch_size=6))
    module.configure_model()
    prompt_ids = [module.tokenizer(text)["input_ids"] for text in ("a b", "the long prompt here", "c")]
    rollout = module.generate(prompt_ids, temperature=0.7, top_p=1.0, max_new_tokens=6, n=3)
    mask = rollout.batch["completion_mask"][:, 1:].bool()
    forward = module.policy_logps(rollout.batch, temperature=0.7).token_logps
    assert rollout.sampler_logps.shape == forward.shape and mask.any()
    torch.testing.assert_close(rollout.sampler_logps[mask], forward[mask], atol=1e-5, rtol=1e-5)
    assert torch.all(rollout.sampler_logps[~mask] == 0)
    # top-p sampling draws from a truncated distribution the loss does not score: not kept
    assert module.generate(prompt_ids, temperature=0.7, top_p=0.9, max_new_tokens=6, n=3).sampler_logps is None


def test_rollouts_joined_keep_their_sampler_logps_padded():
    def rollout(width, value):
        batch = {"input_ids": torch.ones(2, width, dtype=torch.long), "attention_mask": torch.ones(2, width, dtype=torch.long),
                 "completion_mask": torch.ones(2, width, dtype=torch.long), "group_index": torch.zeros(2, dtype=torch.long)}
        return Rollout(batch, ["x", "y"], torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.long),
                       torch.full((2, width - 1), value))

    joined = concat_rollouts([rollout(3, 1.0), rollout(5, 2.0)])
    assert joined.sampler_logps.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [2, 2, 2, 2], [2, 2, 2, 2]]


@pytest.mark.parametrize("name, settings", [("rloo", {}), ("grpo", {"beta": 0.0, "num_iterations": 2})])
def test_an_online_fit_with_the_engines_log_probs_trains_as_with_a_forward(tmp_path, name, settings, one_thread, monkeypatch):
    """The same steps and weights with and without ``online.sampler_logps`` (the log-probs
    agree to rounding), and with it no policy forward without grad in the rollouts.

    At the first step the policy is the reference, so the forward's KL is exactly 0 and the
    engine's is rounding (1e-7): a group of equal rewards then has advantages of exactly 0
    or of rounding, and Adam with its usual eps moves a weight by the whole learning rate
    whatever its gradient's size. An eps of 1e-3 scales such gradients' steps to nothing
    and leaves the real ones' near the learning rate."""
    from tests.online_learning import tiny_online_fit

    rollout_forwards = []
    original = OnlinePolicyModule.policy_logps

    def counted(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            rollout_forwards.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OnlinePolicyModule, "policy_logps", counted)
    losses, weights, forwards = {}, {}, {}
    for from_sampler in (False, True):
        rollout_forwards.clear()
        algorithm = create_algorithm(name, num_generations=4, max_new_tokens=6, **settings)
        online = OnlineSettings(sample_table_every_n_steps=0, engine="decode", sampler_logps=from_sampler)
        losses[from_sampler], weights[from_sampler] = tiny_online_fit(tmp_path, algorithm, online, eps=1e-3)
        forwards[from_sampler] = len(rollout_forwards)
    assert forwards[False] > 0 and forwards[True] == 0
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    torch.testing.assert_close(weights[True], weights[False], atol=3e-4, rtol=1e-4)
