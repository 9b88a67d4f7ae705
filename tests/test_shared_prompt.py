"""A preference pair as one row (the prompt once) gives the usual layout's log-probs and gradients."""

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.data.collate import PreferenceCollator
from lightning_rlhf.data.shared_prompt import attention_mask, shared_prompt_layout
from lightning_rlhf.models.config import ModelSettings
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
