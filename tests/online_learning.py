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
