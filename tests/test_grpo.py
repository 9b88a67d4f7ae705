"""GRPO and its variants: advantages, penalties and each loss against hand arithmetic, and
the plugin on the tiny model."""

import math

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.algorithm import Experience
from lightning_rlhf_plugins.grpo import group_advantages, group_is_flat, overlong_penalty
from tests.objective_fakes import GivenLogps

# Two completions (no group structure needed for the loss itself):
#   seq 0: new log-probs [-1.0, -2.0], old [-1.1, -1.8], A = +1.0 -> log-ratios [0.1, -0.2]
#          ratios [e^0.1, e^-0.2] = [1.105171, 0.818731] (inside [0.8, 1.2]: no clipping)
#   seq 1: new [-0.5], old [-0.5], A = -0.5 -> ratio 1
# token losses -min(rho A, clip(rho) A): seq 0 [-1.105171, -0.818731], seq 1 [0.5]
#   grpo     (mean(-1.105171, -0.818731) + 0.5) / 2                = -0.230975
#   dr_grpo  (-1.105171 - 0.818731 + 0.5) / (2 rows * 4 max tokens) = -0.177988
#   dapo     (-1.105171 - 0.818731 + 0.5) / 3 tokens                = -0.474634
#   gspo     s0 = exp(mean(0.1, -0.2)) = e^-0.05 = 0.951229: (-0.951229 + 0.5) / 2 = -0.225615
#   cispo    -sg(rho) A log pi: seq 0 [1.105171 * 1.0, 0.818731 * 2.0], seq 1 [-1 * 0.5 * 0.5]
#            (1.105171 + 1.637462 - 0.25) / 3                       = 0.830877
POLICY = [[-1.0, -2.0], [-0.5]]
OLD = torch.tensor([[-1.1, -1.8], [-0.5, 0.0]])
REFERENCE = [[-1.2, -2.0], [-0.7]]


def batch(**extra) -> dict:
    return {"old_logps": OLD, "advantages": torch.tensor([1.0, -0.5]), "loss_rows": torch.tensor(2),
            "loss_tokens": torch.tensor(3), **extra}


@pytest.mark.parametrize(("loss_type", "expected"), [
    ("grpo", -0.230975), ("dr_grpo", -0.177988), ("dapo", -0.474634), ("gspo", -0.225615), ("cispo", 0.830877),
])
def test_each_loss_by_hand(loss_type, expected):
    algorithm = create_algorithm("grpo", loss_type=loss_type, max_new_tokens=4)
    out = algorithm.loss(GivenLogps(POLICY), batch())
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert out.metrics["clip_fraction"].item() == 0.0


def test_the_k3_term_and_no_reference_without_it():
    """beta 0.1, reference [-1.2, -2.0], [-0.7]: delta = ref - new = [-0.2, 0], [-0.2];
    k3 = e^d - d - 1 = [0.018731, 0], [0.018731].
    grpo: ((-1.105171 + 0.0018731 - 0.818731) / 2 + 0.5 + 0.0018731) / 2 = -0.229571;
    kl metric: mean over sequences of each one's token mean: (0.0093654 + 0.018731) / 2 = 0.014048."""
    algorithm = create_algorithm("grpo", beta=0.1)
    assert algorithm.needs_reference and not create_algorithm("grpo").needs_reference
    ref = torch.tensor([[-1.2, -2.0], [-0.7, 0.0]])
    out = algorithm.loss(GivenLogps(POLICY), batch(ref_logps=ref))
    assert out.loss.item() == pytest.approx(-0.229571, abs=1e-5)
    assert out.metrics["kl"].item() == pytest.approx(0.014048, abs=1e-5)


def test_clipping_stops_the_gradient_where_the_papers_say():
    """seq 0 token 0 at ratio e^0.5 = 1.6487 > 1.2 with A = +1: grpo clips it (no gradient
    there); dapo's clip-higher (1.28) still clips it; cispo (upper 5.0) keeps it, with weight 1.6487."""
    old = torch.tensor([[-1.5, -1.8], [-0.5, 0.0]])
    grads = {}
    for loss_type in ("grpo", "dapo", "cispo"):
        ctx = GivenLogps(POLICY)
        out = create_algorithm("grpo", loss_type=loss_type).loss(ctx, batch(old_logps=old))
        out.loss.backward()
        grads[loss_type] = ctx.grad[0, 0].item()
        if loss_type != "cispo":
            assert out.metrics["clip_fraction"].item() == pytest.approx(1 / 3)
    assert grads["grpo"] == 0.0 and grads["dapo"] == 0.0
    assert grads["cispo"] == pytest.approx(-math.exp(0.5) * 1.0 / 3, abs=1e-5)  # d/d logp of -w A logp / 3 tokens


def test_group_advantages_by_hand():
    """Two groups of 3: [1, 2, 3] -> mean 2, std 1 -> [-1, 0, 1] / (1 + 1e-4); [5, 5, 5] -> all equal."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    scaled, flat = group_advantages(rewards, 3, divide_by_std=True), group_is_flat(rewards, 3)
    torch.testing.assert_close(scaled, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / torch.tensor([1.0001] * 3 + [1.0001] * 3))
    assert flat.tolist() == [False, True]
    centred = group_advantages(rewards, 3, divide_by_std=False)  # Dr. GRPO
    assert centred.tolist() == [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_overlong_penalty_by_hand():
    """max 20 tokens, buffer 8: 0 up to 12 tokens, then -(L - 12) / 8: 16 -> -0.5, 20 -> -1."""
    lengths = torch.tensor([5, 12, 16, 20])
    assert overlong_penalty(lengths, 20, 8).tolist() == [0.0, 0.0, -0.5, -1.0]


def test_settings_are_checked_and_the_schedule_counts_sampled_rows():
    for bad in ({"num_generations": 1}, {"loss_type": "ppo"}, {"beta": -1.0}, {"overlong_buffer": 48}):
        with pytest.raises(ValueError):
            create_algorithm("grpo", **bad)
    algorithm = create_algorithm("grpo", num_generations=4, num_iterations=2, minibatch_size=8)
    assert algorithm.samples_per_prompt == 4
    assert algorithm.updates_per_rollout(6 * 4) == 2 * 3  # 24 rows in 8-row minibatches, twice
    assert create_algorithm("grpo", loss_type="dapo").upper_clip == 0.28
    assert not create_algorithm("grpo", loss_type="dr_grpo").divides_by_std


def test_rollout_on_the_tiny_model_groups_rows_and_drops_flat_groups(tiny_tokenizer):
    """G = 4 samples of 3 prompts, scored by how many letters "e" they hold; DAPO leaves out
    the groups whose 4 rewards are equal; one step per rollout needs no pi_old forward."""
    from lightning_rlhf.rewards import FunctionReward
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    for loss_type in ("grpo", "dapo"):
        # refill_rounds 0: the filter alone (refilling draws prompts from a Trainer's data)
        algorithm = create_algorithm("grpo", loss_type=loss_type, max_new_tokens=6, refill_rounds=0 if loss_type == "dapo" else None)
        module = make_policy_module(algorithm, reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
        prompts = make_batch("prompt", module.tokenizer)
        experience = algorithm.rollout(module, prompts)
        groups = experience.group_index.tolist()
        assert groups == sorted(groups) and "old_logps" not in experience.tensors and "ref_logps" not in experience.tensors
        if loss_type == "grpo":
            assert len(experience) == 3 * 4 and groups == [g for g in range(3) for _ in range(4)]
        for g in set(groups):
            rows = [i for i, x in enumerate(groups) if x == g]
            assert abs(sum(experience.tensors["advantages"][rows].tolist())) < 1e-4  # centred in its group
        if len(experience):
            out = algorithm.loss(module, next(iter(algorithm.minibatches(experience))))
            assert torch.isfinite(out.loss)


class RefillWorld:
    """A ctx whose prompts are letters: a group is informative (rewards 0, 1, 0, 1) when its
    prompt is in INFORMATIVE, flat (all 0) otherwise; refills come from REFILLS in order."""

    INFORMATIVE = {"b", "d", "f"}
    REFILLS = ["d", "e", "f", "g"]

    def __init__(self):
        self.draws = []

    @staticmethod
    def batch(letters):
        return {"prompt_ids": [[ord(x)] for x in letters], "prompts": list(letters), "columns": [{} for _ in letters]}

    def generate(self, prompt_ids, temperature, top_p, max_new_tokens, n=1):
        from lightning_rlhf.data.collate import pad_sequences
        from lightning_rlhf.rollout import Rollout

        rows = [ids for ids in prompt_ids for _ in range(n)]  # prompt-major, as OnlineContext.generate lays them out
        batch = pad_sequences([(ids, [1, 2] if i % 2 else [3]) for i, ids in enumerate(rows)], 0)
        count = len(rows)
        return Rollout(batch, [str(i % 2) for i in range(count)], torch.ones(count, dtype=torch.bool),
                       torch.tensor([2 if i % 2 else 1 for i in range(count)]))

    def reward(self, prompts, completions, columns):
        return torch.tensor([float(p in self.INFORMATIVE and c == "1") for p, c in zip(prompts, completions)])

    def more_prompts(self, count, draw):
        self.draws.append((count, draw))
        taken, self.REFILLS = self.REFILLS[:count], self.REFILLS[count:]
        return self.batch(taken)


def test_dapo_refills_flat_groups_with_more_prompts():
    """Prompts a (flat), b, c (flat): one informative group of 3. Draw 1 asks for 2 more (d, e:
    one informative), draw 2 for 1 more (f): three informative groups, b, d, f, are trained on."""
    world = RefillWorld()
    algorithm = create_algorithm("grpo", loss_type="dapo", num_generations=4)
    experience = algorithm.rollout(world, world.batch("abc"))
    assert world.draws == [(2, 1), (1, 2)]
    assert experience.prompts == [x for x in "bdf" for _ in range(4)]
    assert experience.group_index.tolist() == [g for g in (1, 3, 5) for _ in range(4)]
    assert experience.metrics["objective/refill_prompts"].item() == 3
    assert experience.tensors["input_ids"].shape[1] == 3  # the refills' rows padded to the widest


def test_dapo_makes_up_a_short_batch_with_flat_groups():
    """One draw only: b and d are informative, and the first flat group (a) makes up the third,
    with advantages 0, so every rollout trains on B groups."""
    world = RefillWorld()
    experience = create_algorithm("grpo", loss_type="dapo", num_generations=4, refill_rounds=1).rollout(world, world.batch("abc"))
    assert experience.prompts == [x for x in "abd" for _ in range(4)]
    assert experience.tensors["advantages"][:4].abs().max().item() == 0.0
    with pytest.raises(ValueError, match="only with loss_type dapo"):
        create_algorithm("grpo", loss_type="grpo", refill_rounds=2)


def test_an_empty_rollout_yields_no_step():
    assert list(create_algorithm("grpo").minibatches(Experience({"input_ids": torch.zeros(0, 4, dtype=torch.long)}))) == []


# -- RLOO and REINFORCE++: the same engine, other advantages --------------------------------
def test_rloo_leave_one_out_advantages_by_hand():
    """One group of k = 4: rewards [1, 2, 3, 6]. A_i = R_i - mean of the other three:
    1 - 11/3 = -2.6667, 2 - 10/3 = -1.3333, 3 - 3 = 0, 6 - 2 = 4.
    With beta 0.5 and summed log-ratios [0.2, 0, -0.4, 1.0]: R = [0.9, 2.0, 3.2, 5.5], mean 2.9,
    A = 4/3 (R - 2.9) = [-2.6667, -1.2, 0.4, 3.4667]."""
    rloo = create_algorithm("rloo", num_generations=4, beta=0.5)
    rewards, mask = torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.ones(4, 2, dtype=torch.bool)
    torch.testing.assert_close(rloo.advantages(rewards, mask, None), torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))
    log_ratio = torch.tensor([[0.2, 0.0], [0.0, 0.0], [-0.3, -0.1], [0.5, 0.5]])
    torch.testing.assert_close(rloo.advantages(rewards, mask, log_ratio), torch.tensor([-8 / 3, -1.2, 0.4, 3.4 + 0.2 / 3]))
    assert rloo.needs_reference and not create_algorithm("rloo", beta=0.0).needs_reference


def test_rloo_loss_is_reinforce_on_the_sequence():
    """At rho = 1 the loss is sum_t -A_i over the tokens, averaged over sequences:
    (-(1.0) * 2 tokens + 0.5 * 1 token) / 2 rows = -0.75; its gradient is -A_i / rows per token."""
    ctx = GivenLogps(POLICY)
    out = create_algorithm("rloo").loss(ctx, batch(old_logps=torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])))
    assert out.loss.item() == pytest.approx(-0.75, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(ctx.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.0]]))


def test_reinforce_pp_token_advantages_by_hand():
    """Scores [1, -1]; completion 0 has 3 tokens with log-ratios [0.1, 0.2, -0.1], completion 1
    has 2 with [0.4, 0]; beta 0.5. Token rewards: [-0.05, -0.1, -0.05 + 1 + 0.1 ...] -- precisely:
    r0 = [-0.05, -0.1, 0.05 + 1.0], r1 = [-0.2, 0 - 1.0]; returns to go G0 = [0.9, 0.95, 1.05],
    G1 = [-1.2, -1.0]; whitened over the 5 tokens (mean 0.14, std 1.135451):
    [0.669337, 0.713373, 0.801443], [-1.180147, -1.004006]."""
    algorithm = create_algorithm("reinforce_pp", beta=0.5)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    log_ratio = torch.tensor([[0.1, 0.2, -0.1], [0.4, 0.0, 0.0]])
    advantages = algorithm.advantages(torch.tensor([1.0, -1.0]), mask, log_ratio)
    expected = torch.tensor([[0.669337, 0.713373, 0.801443], [-1.180147, -1.004006, 0.0]])
    torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=1e-5)
    # REINFORCE++-baseline: scores [1, 3] in one group of 2 become [-1, 1] before the same steps
    baseline = create_algorithm("reinforce_pp", num_generations=2, baseline=True, beta=0.0)
    flat = torch.ones(2, 1, dtype=torch.bool)
    torch.testing.assert_close(baseline.advantages(torch.tensor([1.0, 3.0]), flat, None), torch.tensor([[-0.7071], [0.7071]]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="baseline"):
        create_algorithm("reinforce_pp", baseline=True)


@pytest.mark.parametrize("name", ["rloo", "reinforce_pp"])
def test_kl_in_the_reward_on_the_tiny_model(name, tiny_tokenizer):
    """beta > 0: the rollout reads the reference once, puts the KL into the advantages, and the
    loss needs no reference; objective/kl is logged."""
    from lightning_rlhf.rewards import FunctionReward
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    algorithm = create_algorithm(name, num_generations=2, beta=0.1, max_new_tokens=6, **({"baseline": True} if name == "reinforce_pp" else {}))
    module = make_policy_module(algorithm, reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
    assert module.reference_model is not None
    experience = algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    assert "objective/kl" in experience.metrics and "ref_logps" not in experience.tensors
    out = algorithm.loss(module, next(iter(algorithm.minibatches(experience))))
    out.loss.backward()
    assert torch.isfinite(out.loss)


VARIANTS = [("grpo", {"loss_type": t}) for t in ("grpo", "dr_grpo", "dapo", "gspo", "cispo")] + [
    ("rloo", {"beta": 0.0}), ("reinforce_pp", {"baseline": True, "beta": 0.0})]


@pytest.mark.learns
@pytest.mark.parametrize(("name", "settings"), VARIANTS, ids=[s.get("loss_type", n) for n, s in VARIANTS])
def test_each_variant_raises_a_hand_written_reward(tmp_path, name, settings):
    """Through Lightning's Trainer: 6 epochs of 2 rollouts (8 prompts x G = 4 samples), 2 passes
    of 16-row minibatches (48 optimiser steps), rewarding the letters "e" in 8 sampled tokens.
    The mean starts at 0.03 (a random byte-level model).

    Measured over seeds 0-3 on the AVX2 and default kernel paths (8 runs each, the seed set
    after the first measurement): after = grpo 2.52-4.75, dr_grpo 2.30-5.47, dapo 2.39-6.66 (refilling flat groups),
    gspo 6.69-7.69, cispo 2.86-7.97, rloo 1.23-4.41, reinforce_pp 1.39-4.98; the threshold
    is +0.5."""
    from tests.online_learning import letter_e_before_and_after

    algorithm = create_algorithm(name, num_generations=4, num_iterations=2, minibatch_size=16, max_new_tokens=8, **settings)
    before, after, trainer = letter_e_before_and_after(tmp_path, algorithm)
    assert before < 0.5 and after > before + 0.5, (before, after)
    # dapo too: flat groups are replaced by groups of freshly drawn prompts, or made up with flat ones
    assert trainer.global_step == 6 * 2 * 2 * 2  # epochs x rollouts x passes x minibatches


def test_reinforce_pp_with_one_sample_per_prompt_logs_finite_metrics(tiny_tokenizer):
    """REINFORCE++ proper samples once per prompt: no group statistics, nothing NaN."""
    from lightning_rlhf.rewards import FunctionReward
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    algorithm = create_algorithm("reinforce_pp", beta=0.0, max_new_tokens=6)
    module = make_policy_module(algorithm, reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
    experience = algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    assert len(experience) == 3 and "objective/zero_variance_groups" not in experience.metrics
    assert all(torch.isfinite(v) for v in experience.metrics.values())
    assert torch.isfinite(algorithm.loss(module, next(iter(algorithm.minibatches(experience)))).loss)


# -- a reward may leave a sample out (None -> NaN) --------------------------------------------
def test_samples_left_out_take_no_part_in_their_group():
    """Group [1, NaN, 3, 5]: mean 3 and std 2 over the three scored ones -> [-1, 0, 0, 1] / (2 + 1e-4);
    a group with one scored reward is flat. RLOO: 1 - 4 = -3, 0, 3 - 3 = 0, 5 - 2 = 3."""
    rewards = torch.tensor([1.0, float("nan"), 3.0, 5.0, float("nan"), 2.0, float("nan"), float("nan")])
    advantages, flat = group_advantages(rewards, 4, divide_by_std=True), group_is_flat(rewards, 4)
    torch.testing.assert_close(advantages[:4], torch.tensor([-2.0, 0.0, 0.0, 2.0]) / 2.0001)
    assert advantages[4:].tolist() == [0.0, 0.0, 0.0, 0.0] and flat.tolist() == [False, True]
    from lightning_rlhf_plugins.rloo import leave_one_out

    assert leave_one_out(rewards, 4).tolist() == [-3.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]


def test_a_function_reward_returning_none_leaves_the_sample_out(tiny_tokenizer):
    """The rollout leaves unscored samples out of the loss (their rows stay, with no token to
    score, so every process keeps the same rows) and logs their share; PPO refuses them by name."""
    from lightning_rlhf.rewards import FunctionReward
    from lightning_rlhf.testing import make_batch, make_policy_module

    reward = FunctionReward("test_grpo.every_other_unscored")
    assert torch.isnan(reward(["a", "b"], ["x", "y"])).tolist() == [False, True]
    torch.manual_seed(0)
    algorithm = create_algorithm("grpo", max_new_tokens=6)
    module = make_policy_module(algorithm, reward=reward)
    experience = algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    assert len(experience) == 12 and experience.metrics["objective/unscored_fraction"].item() == 0.5
    scored_tokens = experience.tensors["completion_mask"].sum(-1)
    assert (scored_tokens[1::2] == 0).all() and (scored_tokens[0::2] > 0).all()
    assert torch.isfinite(experience.tensors["advantages"]).all()
    minibatch = next(iter(algorithm.minibatches(experience)))
    assert minibatch["loss_rows"].item() == 6
    assert torch.isfinite(algorithm.loss(module, minibatch).loss)
    ppo = create_algorithm("ppo", max_new_tokens=6)
    with pytest.raises(ValueError, match="PPO needs a score for every sample, and the reward left 1 out"):
        ppo.rollout(make_policy_module(ppo, reward=reward), make_batch("prompt", module.tokenizer))


def every_other_unscored(prompts, completions):
    return [None if i % 2 else float(len(c)) for i, c in enumerate(completions)]


def test_a_minibatch_with_every_sample_left_out_still_reaches_every_parameter(tiny_tokenizer):
    """Every sample unscored: the loss has no graph, and the module's backward goes through a
    0 that depends on every trained parameter, so each gets a (zero) gradient: under DDP
    this process then joins the gradient all-reduce and steps with the others."""
    from lightning_rlhf.rewards import FunctionReward
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    algorithm = create_algorithm("grpo", max_new_tokens=6)
    module = make_policy_module(algorithm, reward=FunctionReward("test_grpo.nothing_scored"))
    experience = algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    minibatch = next(iter(algorithm.minibatches(experience)))
    assert minibatch["loss_rows"].item() == 0 and len(experience) == 12
    out = algorithm.loss(module, minibatch)
    assert not out.loss.requires_grad and out.loss.item() == 0.0
    (out.loss + module._zero_through_parameters()).backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)


def nothing_scored(prompts, completions):
    return [None] * len(completions)
