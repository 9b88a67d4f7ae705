"""What the online learning tests measure: the mean number of letters "e" in 8 tokens the
policy samples for the test's prompts, each prompt 4 times, from a fixed random stream."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightning_rlhf.data import PromptDataModule
from lightning_rlhf.engine import HFEngine, SamplingSettings
from lightning_rlhf.rollout import generate_rollout


def write_prompts(directory: Path, count: int = 16) -> Path:
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}:"}) + "\n" for i in range(count)))
    return path


def mean_letter_e(module, data: PromptDataModule, path: Path) -> float:
    module.configure_model()
    data.tokenizer = module.tokenizer
    prompt_ids = [row["prompt_ids"] for row in data.load(str(path))] * 4
    torch.manual_seed(123)
    engine = HFEngine(module.policy, module.tokenizer, batch_size=64)
    rollout = generate_rollout(engine, module.tokenizer, prompt_ids, SamplingSettings(max_new_tokens=8), module.device)
    return sum(c.count("e") for c in rollout.completions) / len(rollout.completions)


def letter_e_before_and_after(directory: Path, algorithm, epochs: int = 6, learning_rate: float = 3e-3, seed: int = 0):
    """Train the tiny model with ``algorithm`` through Lightning's Trainer for ``epochs``
    epochs of 2 rollouts (16 prompts, 8 a batch), rewarding the letters "e" in what it
    samples; returns (mean letters before, after, the trainer)."""
    import lightning as L

    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.optim import OptimizerSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.rewards import FunctionReward

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend
    try:
        path = write_prompts(directory)
        module = OnlinePolicyModule(ModelSettings(name_or_path="builtin:tiny-llama"), algorithm,
                                    optimizer=OptimizerSettings(learning_rate=learning_rate, schedule="constant"),
                                    reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"),
                                    online=OnlineSettings(sample_table_every_n_steps=0))
        data = PromptDataModule(path=str(path), batch_size=8, max_length=32)
        before = mean_letter_e(module, data, path)
        L.seed_everything(seed)
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, data)
        after = mean_letter_e(module, data, path)
    finally:
        torch.set_num_threads(threads)
    return before, after, trainer


def tiny_online_fit(directory: Path, algorithm, online, steps: int = 4, eps: float = 1e-8) -> tuple[list[float], torch.Tensor]:
    """``steps`` optimiser steps of the tiny model on 8 prompts rewarded for the letter e,
    seeded: each step's logged loss, and the policy's weights at the end, flat (for fits
    that must take the same steps whatever an engineering setting in ``online`` says)."""
    import lightning as L

    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.modules.optim import OptimizerSettings
    from lightning_rlhf.rewards import FunctionReward

    L.seed_everything(0)
    module = OnlinePolicyModule(ModelSettings("builtin:tiny-llama"), algorithm,
                                reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"),
                                optimizer=OptimizerSettings(learning_rate=1e-2, schedule="constant", eps=eps), online=online)
    data = PromptDataModule(path=str(write_prompts(directory, count=8)), batch_size=4, max_length=32)
    losses = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Losses()])
    trainer.fit(module, data)
    return losses, torch.cat([p.detach().flatten() for p in module.policy.parameters()])
