"""PRIME's online implicit PRM (``rewards.OnlineImplicitPRM``, ``grpo`` with
``online_process_rewards``): the PRM's loss and the combined advantage by hand, one update
per rollout before the PRM scores, no update while validating, and its weights and
optimiser state through a killed and resumed run."""

from __future__ import annotations

import math
import signal
from types import SimpleNamespace

import pytest
import torch
import yaml

from lightning_rlhf import create_algorithm
from lightning_rlhf.rewards import FunctionReward, OnlineImplicitPRM
from lightning_rlhf.rewards.online_prm import outcome_loss
from lightning_rlhf.testing import make_batch, make_policy_module
from lightning_rlhf_plugins.grpo import leave_one_out_means, prime_advantages
from tests.test_resume import fit_in_process, fit_in_subprocess, kill_at, write_recipe

HAS_E = "tests.test_online_prm.has_letter_e"  # importable in the killed run's process too


def has_letter_e(prompts: list[str], completions: list[str]) -> list[float]:
    """An outcome in {0, 1}: the completion has an ``e``."""
    return [float("e" in c) for c in completions]


def count_e(prompts: list[str], completions: list[str]) -> list[float]:
    """Not an outcome: counts reach past 1."""
    return [2.0 + c.count("e") for c in completions]


def test_the_prm_loss_by_hand():
    """beta 0.5, summed log-ratios 2 (outcome 1) and -1 (outcome 0): logits 1 and -0.5;
    -log sigmoid(1) = 0.313262, -log(1 - sigmoid(-0.5)) = -log sigmoid(0.5) = 0.474077;
    mean 0.393670. A PRM equal to its reference (log-ratios 0) scores log 2 = 0.693147
    whatever the outcomes."""
    loss = outcome_loss(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]), 0.5)
    assert loss.item() == pytest.approx(0.393670, abs=1e-6)
    assert outcome_loss(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), 0.05).item() == pytest.approx(math.log(2), abs=1e-6)


def test_the_prime_advantage_by_hand():
    """K = 2, outcomes 1 and 0: outcome advantages 1 - 0 = 1 and 0 - 1 = -1. Token rewards
    [0.5, -0.5, 1.0] (mean 1/3) and [0.0, 0.3, (masked)] (mean 0.15); each row's process
    baseline is the other's mean: row 0, 0.15: [0.35, -0.65, 0.85], returns [0.55, 0.2, 0.85];
    row 1, 1/3: [-1/3, -1/30, 0], returns [-0.366667, -0.033333, 0]. Plain sum (w = 1):
    [1.55, 1.2, 1.85] and [-1.366667, -1.033333, 0].

    K = 4 with a sample left out (NaN) and w = 0.5: outcomes 1, 0, 1 give 1 - 1/2 = 0.5,
    0 - 1 = -1, 0.5; means 1/3, 0.15, 0.2 give baselines 0.175, 0.266667, 0.241667; row 0:
    0.5 + 0.5 * [0.475, 0.15, 0.825] = [0.7375, 0.575, 0.9125]; row 1: -1 + 0.5 *
    [-0.233333, 0.033333, 0] = [-1.116667, -0.983333] then 0 (masked); row 2: 0.5 + 0.5 *
    (0.2 - 0.241667) = 0.479167; the unscored row: 0."""
    rewards = torch.tensor([[0.5, -0.5, 1.0], [0.0, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    expected = torch.tensor([[1.55, 1.2, 1.85], [-1.366667, -1.033333, 0.0]])
    torch.testing.assert_close(prime_advantages(torch.tensor([1.0, 0.0]), rewards, mask, 2), expected, rtol=0, atol=1e-5)

    rewards = torch.cat([rewards, torch.tensor([[0.2, 7.0, 7.0], [1.0, 1.0, 1.0]])])
    mask = torch.cat([mask, torch.tensor([[1, 0, 0], [1, 1, 1]])])
    got = prime_advantages(torch.tensor([1.0, 0.0, 1.0, math.nan]), rewards, mask, 4, process_weight=0.5)
    expected = torch.tensor([[0.7375, 0.575, 0.9125], [-1.116667, -0.983333, 0.0], [0.479167, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(leave_one_out_means(torch.tensor([1.0, 2.0, math.nan, 4.0]), 4), torch.tensor([3.0, 2.5, 7 / 3, 1.5]))


def online_prm(**kwargs) -> OnlineImplicitPRM:
    return OnlineImplicitPRM(FunctionReward(HAS_E), "builtin:tiny-llama", **kwargs)


def test_each_rollout_updates_the_prm_once_before_it_scores(one_thread):
    """The PRM starts as its reference: the loss of the first update is log 2 exactly; the
    update moves pi_phi (never pi_ref) so that completions with an ``e`` gain log-ratio
    against those without; the advantages come from the updated PRM's token rewards. While
    validating (``eval``) the PRM scores without learning."""
    torch.manual_seed(0)
    algorithm = create_algorithm("grpo", num_generations=4, online_process_rewards=True, max_new_tokens=8, temperature=2.0)
    module = make_policy_module(algorithm)
    module.reward_source = source = online_prm(learning_rate=1e-2)
    reference = {k: v.clone() for k, v in source.model.reference.state_dict().items()}
    before = {k: v.clone() for k, v in source.model.policy.state_dict().items()}
    experience = algorithm.rollout(module, make_batch("prompt", module.tokenizer))

    assert experience.metrics["objective/prm/loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert any(not torch.equal(v, before[k]) for k, v in source.model.policy.state_dict().items())
    for key, value in source.model.reference.state_dict().items():
        assert torch.equal(value, reference[key]), key
    batch = {k: experience.tensors[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    ratios, _ = source.token_log_ratios(batch)
    outcomes = torch.tensor(has_letter_e([], experience.completions))
    assert 0 < outcomes.sum() < len(outcomes), "the sampled outcomes should be mixed"
    sums = ratios.sum(-1)
    assert sums[outcomes == 1].mean() > sums[outcomes == 0].mean()
    expected = prime_advantages(outcomes, source.beta * ratios, experience.tensors["completion_mask"][:, 1:], 4)
    torch.testing.assert_close(experience.tensors["advantages"], expected, rtol=0, atol=1e-5)
    out = algorithm.loss(module, next(iter(algorithm.minibatches(experience))))
    out.loss.backward()
    assert torch.isfinite(out.loss)

    source.eval()
    after = {k: v.clone() for k, v in source.model.policy.state_dict().items()}
    validation = algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    assert "objective/prm/loss" not in validation.metrics
    for key, value in source.model.policy.state_dict().items():
        assert torch.equal(value, after[key]), key


def test_online_process_rewards_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="online_process_rewards"):
        create_algorithm("grpo", loss_type="gspo", online_process_rewards=True)
    with pytest.raises(ValueError, match="online_process_rewards"):
        create_algorithm("grpo", process_rewards=True, online_process_rewards=True)
    with pytest.raises(ValueError, match="online_process_rewards"):
        create_algorithm("grpo", scale_rewards=True, online_process_rewards=True)
    module = make_policy_module(create_algorithm("grpo", online_process_rewards=True, max_new_tokens=4))
    module.reward_source = FunctionReward(HAS_E)
    with pytest.raises(RuntimeError, match="OnlineImplicitPRM"):
        module.algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    module.reward_source = OnlineImplicitPRM(FunctionReward("tests.test_online_prm.count_e"), "builtin:tiny-llama")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        module.algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    module.reward_source = online_prm()
    module._trainer = SimpleNamespace(world_size=2)  # a data-parallel run: each process would train its own PRM
    with pytest.raises(RuntimeError, match="not synchronised"):
        module.algorithm.rollout(module, make_batch("prompt", module.tokenizer))


PRIME_REWARD = {"class_path": "lightning_rlhf.rewards.OnlineImplicitPRM",
                "init_args": {"outcome": {"class_path": "lightning_rlhf.rewards.FunctionReward", "init_args": {"function": HAS_E}},
                              "path": "builtin:tiny-llama", "learning_rate": 1e-2}}


def prime_recipe(tmp_path, root: str, callbacks: list | None = None, name: str = "recipe"):
    """test_resume's grpo recipe (2 samples of 6 prompts a rollout, 3 rollouts an epoch, 2
    epochs), with PRIME's advantages and the online PRM as the reward."""
    path = write_recipe(tmp_path, "grpo", root, callbacks, name=name)
    recipe = yaml.safe_load(path.read_text())
    recipe["model"]["init_args"]["algorithm"]["init_args"].update(online_process_rewards=True, beta=0.0, temperature=2.0)
    recipe["model"]["init_args"]["reward"] = PRIME_REWARD
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_killed_and_resumed_run_restores_the_prm_and_its_optimiser(tmp_path, one_thread):
    whole = fit_in_process("--config", str(prime_recipe(tmp_path, "whole", name="whole")))
    assert whole.trainer.global_step == 6

    killed = fit_in_subprocess(prime_recipe(tmp_path, "killed", [kill_at(5)], name="killed"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    saved = checkpoint["reward_state"]["reward"]
    assert saved["optimizer"]["state"][0]["step"].item() == 4  # one PRM step per rollout

    resumed = fit_in_process("--config", str(prime_recipe(tmp_path, "killed", name="resume")), "--ckpt_path", str(last))
    assert resumed.trainer.global_step == 6
    torch.testing.assert_close(resumed.trainer.callback_metrics["train/loss"], whole.trainer.callback_metrics["train/loss"],
                               rtol=0, atol=1e-6)
    for model in ("policy",):
        expected = getattr(whole.model, model).state_dict()
        for key, value in getattr(resumed.model, model).state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)
    expected = whole.model.reward_source.state_dict()
    got = resumed.model.reward_source.state_dict()
    for key, value in got["model"].items():
        torch.testing.assert_close(value, expected["model"][key], rtol=0, atol=1e-6, msg=key)
    assert got["optimizer"]["state"][0]["step"].item() == 6
    torch.testing.assert_close(got["optimizer"]["state"][0]["exp_avg_sq"], expected["optimizer"]["state"][0]["exp_avg_sq"],
                               rtol=0, atol=1e-9)
