"""What the engine does around a plugin's rollout: its scoring forwards run in pieces of
``online.rollout_batch_size`` rows, under no grad, and the progress bar shows the metric
the plugin names."""

import lightning as L
import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.data import PromptDataModule
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.critic import CriticSettings
from lightning_rlhf.models.loading import unwrap
from lightning_rlhf.modules.online import OnlineSettings
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.modules.online_policy import OnlinePolicyModule
from lightning_rlhf.rewards import FunctionReward
from lightning_rlhf.testing import make_batch
from lightning_rlhf_plugins.ppo import PPO
from tests.online_learning import write_prompts

REWARD = "lightning_rlhf.rewards.rules.letter_e_reward"


def online_module(algorithm, critic: CriticSettings | None = None) -> OnlinePolicyModule:
    module = OnlinePolicyModule(ModelSettings(name_or_path="builtin:tiny-llama"), algorithm, reward=FunctionReward(REWARD),
                          critic=critic, optimizer=OptimizerSettings(learning_rate=1e-3, schedule="constant"),
                          online=OnlineSettings(sample_table_every_n_steps=0))
    module.configure_model()
    return module


def scoring_forwards(module: OnlinePolicyModule) -> dict[str, list[int]]:
    """Rows of every forward without a KV cache (scoring, not sampling), per model, as they happen."""
    models = {"policy": unwrap(module.policy).get_decoder()}
    if module.reference_model is not None:
        models["reference"] = module.reference_model.get_decoder()
    if module.value_model is not None:
        models["critic"] = getattr(module.value_model, module.value_model.base_model_prefix)
    calls = {name: [] for name in models}
    for name, model in models.items():
        def count(_, args, kwargs, name=name):
            if kwargs.get("use_cache") is False:
                calls[name].append(kwargs["input_ids"].shape[0])
        model.register_forward_pre_hook(count, with_kwargs=True)
    return calls


def rollout_with(module: OnlinePolicyModule, rows: int | None, seed: int = 0):
    """One rollout of the sample prompts, scoring in pieces of ``rows`` (None: all at once)."""
    module.online_settings = OnlineSettings(rollout_batch_size=rows, sample_table_every_n_steps=0)
    torch.manual_seed(seed)  # the same samples either way
    return module.algorithm.rollout(module, make_batch("prompt", module.tokenizer))


def test_ppo_rollout_in_pieces_scores_as_one_forward(tiny_tokenizer, one_thread):
    """3 prompts; pieces of 2 rows: old log-probs, values (a separate critic) and the
    reference's log-probs (through the KL in the rewards, and directly) match one forward."""
    module = online_module(create_algorithm("ppo", max_new_tokens=8, kl_coef=0.1), critic=CriticSettings())
    calls = scoring_forwards(module)
    whole = rollout_with(module, None)
    assert calls == {"policy": [3], "reference": [3], "critic": [3]}
    for rows in calls.values():
        rows.clear()
    pieces = rollout_with(module, 2)
    assert calls == {"policy": [2, 1], "reference": [2, 1], "critic": [2, 1]}
    assert whole.completions == pieces.completions
    for key in ("old_logps", "old_values", "advantages", "returns", "rlhf_reward"):
        torch.testing.assert_close(pieces.tensors[key], whole.tensors[key], atol=1e-6, rtol=1e-5, msg=key)
    batch = whole.minibatch(list(range(len(whole))))
    with torch.no_grad():
        reference_in_pieces = module.reference_logps(batch)
        module.online_settings = OnlineSettings()
        reference = module.reference_logps(batch)
    torch.testing.assert_close(reference_in_pieces.token_logps, reference.token_logps, atol=1e-6, rtol=1e-5)
    assert reference.token_logps.shape == batch["completion_mask"][:, 1:].shape


def test_grpo_rollout_in_pieces_scores_as_one_forward(tiny_tokenizer, one_thread):
    """3 prompts x G = 4 rows; two passes (so pi_old is read) and beta > 0 (the reference):
    pieces of 2 rows give the old and reference log-probs of one forward, each row padded
    back to the rollout's width; pieces of 5 rows cut groups (5, 5, 2), which scoring may."""
    algorithm = create_algorithm("grpo", num_generations=4, beta=0.1, num_iterations=2, max_new_tokens=6)
    module = online_module(algorithm)
    calls = scoring_forwards(module)
    whole = rollout_with(module, None)
    assert calls == {"policy": [12], "reference": [12]}
    for rows in calls.values():
        rows.clear()
    pieces = rollout_with(module, 2)
    assert calls == {"policy": [2] * 6, "reference": [2] * 6}
    for rows in calls.values():
        rows.clear()
    uneven = rollout_with(module, 5)
    assert calls == {"policy": [5, 5, 2], "reference": [5, 5, 2]}
    assert whole.completions == pieces.completions == uneven.completions
    for key in ("old_logps", "ref_logps", "advantages"):
        assert pieces.tensors[key].shape == whole.tensors[key].shape, key
        torch.testing.assert_close(pieces.tensors[key], whole.tensors[key], atol=1e-6, rtol=1e-5, msg=key)
        torch.testing.assert_close(uneven.tensors[key], whole.tensors[key], atol=1e-6, rtol=1e-5, msg=key)


def test_rollout_batch_size_defaults_to_the_micro_batch_size_and_only_without_grad(tiny_tokenizer, one_thread):
    module = online_module(create_algorithm("ppo", max_new_tokens=4), critic=CriticSettings(share_policy_backbone=True))
    module.online_settings = OnlineSettings(micro_batch_size=2)
    assert module.online_settings.rollout_rows == 2
    assert OnlineSettings(micro_batch_size=2, rollout_batch_size=8).rollout_rows == 8
    with pytest.raises(ValueError, match="online.rollout_batch_size"):
        OnlineSettings(rollout_batch_size=0)
    calls = scoring_forwards(module)
    batch = make_batch("prompt", module.tokenizer)
    experience = module.algorithm.rollout(module, batch)
    assert calls["policy"] == [2, 1]  # log-probs and the shared value head's values from one forward a piece
    calls["policy"].clear()
    module.policy_logps(experience.minibatch([0, 1, 2]))  # with grad: the loop's micro-batches bound it
    assert calls["policy"] == [3]


class GradCheckingPPO(PPO):
    """PPO whose rollout checks the engine turned grad off, without a decorator of its own."""

    def rollout(self, ctx, prompts):
        assert not torch.is_grad_enabled(), "rollout ran with grad enabled"
        return super().rollout(ctx, prompts)


class LengthProgressPPO(PPO):
    """PPO that names another of its metrics for the progress bar."""

    progress_metric = "response_length"


def fit_one_rollout(algorithm, tmp_path) -> L.Trainer:
    L.seed_everything(0)
    module = online_module(algorithm)
    data = PromptDataModule(path=str(write_prompts(tmp_path, count=4)), batch_size=4, max_length=32)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data)
    return trainer


def test_the_engine_runs_rollout_without_grad(tmp_path, tiny_tokenizer, one_thread):
    trainer = fit_one_rollout(GradCheckingPPO(max_new_tokens=4, ppo_epochs=1, minibatch_size=4), tmp_path)
    assert trainer.global_step == 1


def test_the_progress_bar_shows_the_metric_the_plugin_names(tmp_path, tiny_tokenizer, one_thread):
    trainer = fit_one_rollout(LengthProgressPPO(max_new_tokens=4, ppo_epochs=1, minibatch_size=4), tmp_path)
    shown = trainer.progress_bar_metrics
    assert "train/response_length" in shown and "train/objective/scores" not in shown, shown
    assert 1 <= shown["train/response_length"] <= 4
    assert "train/objective/scores" in trainer.callback_metrics  # still logged, off the bar
    assert PPO.progress_metric == "objective/scores"
