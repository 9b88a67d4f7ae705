"""A preference pair, or a prompt's group of samples, as one row (the prompt once) gives the
usual layout's log-probs and gradients."""

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.data.collate import PreferenceCollator
from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.data.shared_prompt import attention_mask, group_prefix_layout, shared_prompt_layout
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.ops import completion_index
from lightning_rlhf.modules.policy import PolicyModule

ROWS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
    {"prompt_ids": [14], "chosen_ids": [15, 16, 17, 18, 19], "rejected_ids": [20]},
    {"prompt_ids": [], "chosen_ids": [21, 22, 23], "rejected_ids": [24, 25]},  # no prompt: first token unscored
]


def test_layout_by_hand():
    out = shared_prompt_layout(ROWS[:1], pad_token_id=0)
    assert out["shared_prompt_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert out["shared_prompt_positions"].tolist() == [[0, 1, 2, 3, 4, 3, 4, 5, 6]]
    assert out["shared_prompt_segments"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    # chosen 8, 9 are predicted at positions 2, 3; rejected 10 at 2 (the prompt's end), 11..13 at 5..7
    assert out["shared_prompt_index"].tolist() == [2, 3, 2, 5, 6, 7]
    mask = attention_mask(torch.tensor([[0, 0, 1, 2, -1]]))[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],  # rejected: the prompt and itself, not the chosen token
        [0, 0, 0, 0, 1],  # padding: only padding
    ]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_same_logps_and_gradients_as_the_usual_layout(attention):
    module = PolicyModule(ModelSettings("builtin:tiny-llama", attn_implementation=attention), create_algorithm("dpo"))
    module.configure_model()
    usual = PreferenceCollator(0)(ROWS)
    shared = PreferenceCollator(0, share_prompt=True)(ROWS)
    assert shared["shared_prompt_ids"].numel() < usual["input_ids"].numel()
    weights = torch.randn(usual["input_ids"].shape[0], usual["input_ids"].shape[1] - 1)
    results = []
    for batch in (usual, shared):
        module.policy.zero_grad()
        logps = module.policy_logps(batch)
        (logps.token_logps * weights).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])
        results.append((logps.token_logps.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)
    assert torch.all(results[1][0][~usual["completion_mask"][:, 1:]] == 0)


def test_dpo_fit_trains_the_same_with_a_shared_prompt(tmp_path):
    import json

    import lightning as L

    from lightning_rlhf.data import PreferenceDataModule

    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"question {i}?" * (i % 3 + 1), "chosen": f" yes {i}" * (i % 4 + 1), "rejected": f" no {i}."}
            for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for share in (False, True):
        torch.manual_seed(0)
        module = PolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("dpo"))
        module.optimizer_settings.learning_rate = 1e-2
        data = PreferenceDataModule(path=str(path), batch_size=4, max_length=96, share_prompt=share)
        seen = []

        class Losses(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                seen.append(outputs["loss"].item())
                assert ("shared_prompt_ids" in batch) == share

        trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Losses()])
        trainer.fit(module, data)
        losses[share] = seen
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert losses[True][0] != pytest.approx(losses[True][-1], abs=1e-3)


def group_batch(sequences, groups, scored=None):
    """The usual right-padded layout of ``(prompt, completion)`` rows with their group numbers;
    rows not ``scored`` keep their tokens and lose their completion mask (left out of a loss)."""
    batch = pad_sequences(sequences, 0)
    batch["group_index"] = torch.tensor(groups)
    if scored is not None:
        batch["completion_mask"] = batch["completion_mask"] * torch.tensor(scored)[:, None]
        batch["logp_index"] = completion_index(batch["completion_mask"])
    return batch


def test_group_prefix_layout_by_hand():
    batch = group_batch([([5, 6, 7], [8, 9]), ([5, 6, 7], [10, 11, 12]), ([14], [15]), ([14], [16, 17])],
                        [0, 0, 1, 1], scored=[1, 1, 1, 0])
    out = {k.removeprefix("shared_prefix_"): v.tolist() for k, v in group_prefix_layout(batch).items()}
    assert out["prompt_ids"] == [[5, 6, 7], [0, 0, 14]] and out["prompt_mask"] == [[1, 1, 1], [0, 0, 1]]  # left-padded
    assert out["completion_ids"] == [[8, 9, 0], [10, 11, 12], [15, 0, 0]]  # row 3 is left out: nothing to predict
    assert out["completion_mask"] == [[1, 1, 0], [1, 1, 1], [1, 0, 0]] and out["prompt_of"] == [0, 0, 1]
    # hidden states: prompts [2 x 3] then completions [3 x 3]. Row 0's 8 is predicted at its
    # prompt's last column (2), its 9 at completion 0's first (6 + 0); row 1's 10 at 2, 11 and
    # 12 at 9 and 10; row 2's 15 at the second prompt's last column (3 + 2)
    assert out["index"] == [2, 6, 2, 9, 10, 5]


def test_group_prefix_layout_declines_where_nothing_is_shared_or_prompts_differ():
    assert group_prefix_layout(group_batch([([5], [6]), ([7], [8])], [0, 1])) is None  # groups of one
    assert group_prefix_layout(group_batch([([5, 6], [7]), ([5, 9], [7])], [0, 0])) is None  # not one prompt
    assert group_prefix_layout(pad_sequences([([5], [6]), ([5], [7])], 0)) is None  # no group_index


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("temperature, entropy", [(1.0, False), (0.7, True)])
def test_group_prefix_layout_gives_the_usual_logps_entropy_and_gradients(attention, temperature, entropy):
    module = PolicyModule(ModelSettings("builtin:tiny-llama", attn_implementation=attention), create_algorithm("dpo"))
    module.configure_model()
    prompts = [[5, 6, 7], [14], [21, 22, 23, 24]]
    completions = [[8, 9], [10, 11, 12, 13], [30], [15, 16, 17], [18], [19, 20], [25, 26, 27, 28, 29], [31, 32]]
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    usual = group_batch([(prompts[g], c) for g, c in zip(groups, completions)], groups, scored=[1, 1, 1, 1, 0, 1, 1, 1])
    shared = {**usual, **group_prefix_layout(usual)}
    computed = shared["shared_prefix_prompt_ids"].numel() + shared["shared_prefix_completion_ids"].numel()
    assert computed < usual["input_ids"].numel()
    weights = torch.randn(usual["input_ids"].shape[0], usual["input_ids"].shape[1] - 1)
    results = []
    for batch in (usual, shared):
        module.policy.zero_grad()
        logps = module._logps(module.policy, batch, temperature, entropy)
        value = (logps.token_logps * weights).sum() + (logps.entropy.sum() if entropy else 0)
        value.backward()
        grads = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])
        results.append((logps.token_logps.detach(), logps.entropy, grads))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    if entropy:
        torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][2], results[0][2], atol=1e-5, rtol=1e-4)
    assert torch.all(results[1][0][~usual["completion_mask"][:, 1:].bool()] == 0)


@pytest.mark.parametrize("name, settings", [("grpo", {"beta": 0.1, "num_iterations": 2}), ("rloo", {})])
def test_online_share_prompt_trains_as_the_usual_layout(tmp_path, name, settings, one_thread, monkeypatch):
    """The same steps, losses and weights with and without ``online.share_prompt``, through
    fit: micro-batches of whole groups, the rollout's scoring forwards in pieces."""
    from lightning_rlhf.data import shared_prompt

    prefix_forwards = []
    original = shared_prompt.group_prefix_hidden
    monkeypatch.setattr(shared_prompt, "group_prefix_hidden",
                        lambda *args: prefix_forwards.append(torch.is_grad_enabled()) or original(*args))
    from lightning_rlhf.modules.online import OnlineSettings
    from tests.online_learning import tiny_online_fit

    with pytest.raises(ValueError, match="share_prompt"):
        OnlineSettings(share_prompt=True, group_by_length=True)
    losses, weights = {}, {}
    for share in (False, True):
        algorithm = create_algorithm(name, num_generations=4, max_new_tokens=6, **settings)
        online = OnlineSettings(sample_table_every_n_steps=0, micro_batch_size=8, rollout_batch_size=6, share_prompt=share)
        losses[share], weights[share] = tiny_online_fit(tmp_path, algorithm, online)
        # with it, the loss's forwards (grad) and the rollout's scoring (no grad) take the prompt once
        assert (set(prefix_forwards) == {True, False}) if share else not prefix_forwards
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    # Adam moves a weight by about the learning rate (1e-2) a step whatever its gradient's
    # size, so rounding in a near-zero gradient shows up to a few 1e-5 after 4 steps; a wrong
    # layout moves weights by whole steps
    torch.testing.assert_close(weights[True], weights[False], atol=3e-4, rtol=1e-4)


def test_share_prompt_and_gradient_checkpointing_do_not_mix(tiny_tokenizer):
    """Under gradient checkpointing transformers' layers drop the prompts' cache: the module
    refuses the two settings together, and a batch laid out for it anyway is scored as rows."""
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule

    with pytest.raises(ValueError, match="gradient checkpointing"):
        OnlinePolicyModule(ModelSettings("builtin:tiny-llama", gradient_checkpointing=True), create_algorithm("grpo"),
                           online=OnlineSettings(share_prompt=True))
    module = PolicyModule(ModelSettings("builtin:tiny-llama", gradient_checkpointing=True), create_algorithm("sft"))
    module.configure_model()
    module.policy.train()
    usual = group_batch([([5, 6, 7], [8, 9]), ([5, 6, 7], [10, 11, 12])], [0, 0])
    shared = {**usual, **group_prefix_layout(usual)}
    torch.testing.assert_close(module.policy_logps(shared).token_logps, module.policy_logps(usual).token_logps)


def test_layers_wrapped_for_activation_checkpointing_score_a_prompt_once_batch_as_rows(tiny_tokenizer):
    """Layers a strategy wraps for activation checkpointing (FSDP's
    ``activation_checkpointing_policy``) run again in the backward without the prompts'
    cache: the batch is scored as rows, and the gradients are the usual layout's."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    module = PolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("sft"))
    module.configure_model()
    usual = group_batch([([5, 6, 7], [8, 9]), ([5, 6, 7], [10, 11, 12])], [0, 0])
    shared = {**usual, **group_prefix_layout(usual)}
    module.policy.train()
    module.policy.zero_grad()
    module.policy_logps(usual).token_logps.sum().backward()
    expected = [p.grad.clone() for p in module.policy.parameters()]
    apply_activation_checkpointing(module.policy, check_fn=lambda layer: isinstance(layer, LlamaDecoderLayer))
    module.policy.zero_grad()
    module.policy_logps(shared).token_logps.sum().backward()
    for got, want in zip([p.grad for p in module.policy.parameters()], expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
