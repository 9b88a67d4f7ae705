"""``check_algorithm``'s harness for self-training plugins (rejection sampling, ReST):
one Grow on the tiny built-in model scored by a rule, a selection, then the loss on an
SFT batch of the kept rows."""

from __future__ import annotations

import io
import math

import torch

from lightning_rlhf.algorithm import LossOutput
from lightning_rlhf.rewards.rules import letter_e_reward
from lightning_rlhf.self_training import Candidate, SelfTrainingAlgorithm
from lightning_rlhf.testing.samples import SAMPLE_ROWS, make_batch, make_policy_module


def sample_prompts(tokenizer) -> list[dict]:
    """The shipped sample prompts as ``SelfTrainingDataModule`` hands them to ``grow``."""
    from lightning_rlhf.data.formats import RowChecker
    from lightning_rlhf.data.prompts import PromptDataModule
    from lightning_rlhf.data.tokenize import Tokenization

    module, tokenization = PromptDataModule(path="<sample>", max_length=64), Tokenization(tokenizer, 64)
    rows = [module.encode(module.parse(RowChecker("<sample>", i + 1, r)), tokenization) for i, r in enumerate(SAMPLE_ROWS["prompt"])]
    return [{**row, "prompt_index": i} for i, row in enumerate(r for r in rows if r is not None)]


def run_self_training_algorithm(algorithm: SelfTrainingAlgorithm) -> tuple[torch.nn.Module, LossOutput]:
    from lightning_rlhf.rewards import FunctionReward

    name = type(algorithm).__name__
    before = algorithm.state_dict()
    module = make_policy_module(algorithm, reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
    phases = algorithm.phases()
    assert phases and phases[0].grow, f"{name}: the first phase must grow (there is nothing to select from yet)"
    assert [p.index for p in phases] == list(range(len(phases))), f"{name}: phases must be indexed 0, 1, ..."
    assert len({p.name for p in phases}) == len(phases), f"{name}: phase names are folder names and must differ"

    prompts = sample_prompts(module.tokenizer)
    grown = algorithm.grow(module, prompts, phases[0], seed=0)
    assert len(grown) == len(prompts) * phases[0].num_samples, f"{name}.grow: expected num_samples candidates per prompt"
    assert all(math.isfinite(c.reward) for c in grown), f"{name}.grow: non-finite reward"

    # Select among candidates known to be usable answers (the random tiny model seldom ends one).
    pairs = [(r["prompt"], r["completion"]) for r in SAMPLE_ROWS["sft"] if "prompt" in r]
    rewards = letter_e_reward([p for p, _ in pairs], [c for _, c in pairs])
    candidates = [Candidate(i, p, c, r, True, phases[0].name, 0) for i, ((p, c), r) in enumerate(zip(pairs, rewards))]
    data = algorithm.start_phase(phases[0], candidates, len(candidates))
    assert all(c in candidates for c in data.selected), f"{name}.select returned rows that were not candidates"

    state = algorithm.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    algorithm.load_state_dict(torch.load(buffer, weights_only=True))  # checkpoints hold plain data
    assert algorithm.state_dict() == state, f"{name}: load_state_dict(state_dict()) does not give the state back"

    kept = data.selected or candidates  # a threshold above the rule's rewards keeps none: train on all to test the loss
    batch = make_batch("sft", module.tokenizer, [c.sft_row() for c in kept])
    out = algorithm.loss(module, batch)
    algorithm.load_state_dict(before)
    return module, out
