"""The toy world's LLM judge: ``builtin:toyworld-judge``, an RLAIF labeller that runs offline.

The judge is the toy world's *base* model (``builtin:toyworld-pretrained``, not the policy)
fine-tuned to answer ``A`` or ``B``: which of two continuations of a prompt reads more
positive. Its training pairs are two corpus continuations of one prompt (the kind of text
the SFT policy learned to write, not the policy's own samples, which would take minutes
to draw), labelled by the gold reward and shown in both orders so that neither letter is
the safe guess; pairs the gold reward ties on are left out. It then labels preferences through
``lightning-rlhf label --judge builtin:toyworld-judge`` like any pairwise judge
(``lightning_rlhf.rewards.judge``): the whole RLAIF loop (judge labels -> DPO -> gold
evaluation) runs on a CPU, and how far its labels are from gold can be measured.

Its training prompts come from the training split under a seed of their own; agreement
with gold is measured on the SFT policy's samples for held-out prompts (:func:`agreement`),
text of another source on prompts it never saw.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from lightning_rlhf.models.builtin import resolve, seeded
from lightning_rlhf.toyworld import corpus
from lightning_rlhf.toyworld.gold import gold_reward
from lightning_rlhf.toyworld.models import WorldConfig, count_parameters, sft_examples, train_causal_lm

# The rubric is what the judge was trained to answer, so the template states it plainly.
TEMPLATE = "Which goes on more positively?\n{prompt}\nA:{first}\nB:{second}\nAnswer: "
CHOICES = ("A", "B")


@dataclass(frozen=True)
class JudgeConfig:
    """Sizes of the judge's build; the defaults are ``builtin:toyworld-judge``'s."""

    seed: int = 0
    pairs: int = 20_000
    """corpus answer pairs drawn (gold ties are then left out)"""
    max_answer_tokens: int = 48
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3


def judge_text(prompt: str, first: str, second: str) -> str:
    return TEMPLATE.format(prompt=prompt, first=first, second=second)


def gold_labelled(triples: list[tuple[str, str, str]]) -> list[tuple[str, str, str, float]]:
    """``(prompt, first, second, gold(first) - gold(second))``, gold ties left out."""
    prompts = [p for p, _, _ in triples]
    gaps = [a - b for a, b in zip(gold_reward(prompts, [a for _, a, _ in triples]), gold_reward(prompts, [b for *_, b in triples]))]
    return [(p, a, b, gap) for (p, a, b), gap in zip(triples, gaps) if gap != 0]


def policy_pairs(policy, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[tuple[str, str, str, float]]:
    """``(prompt, first, second, gold(first) - gold(second))`` for two policy samples per
    prompt, gold ties left out."""
    from lightning_rlhf.generation import sample

    groups = sample(policy, tokenizer, prompts, n=2, max_new_tokens=max_new_tokens, batch_size=128, seed=seed,
                    progress="toy judge: sampling policy pairs")
    return gold_labelled([(p, g[0].text, g[1].text) for p, g in zip(prompts, groups)])


def judge_examples(tokenizer: PreTrainedTokenizerFast, pairs, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Each pair in both orders, answered with the letter of the gold winner; texts longer
    than the model's context are left out."""
    texts = []
    for prompt, first, second, gap in pairs:
        texts.append((judge_text(prompt, first, second), CHOICES[0] if gap > 0 else CHOICES[1]))
        texts.append((judge_text(prompt, second, first), CHOICES[1] if gap > 0 else CHOICES[0]))
    return [example for example in sft_examples(tokenizer, texts) if len(example[0]) <= max_length]


def build_judge(directory: str | Path, config: JudgeConfig = JudgeConfig(), world: WorldConfig | None = None,
                base: str | None = None) -> dict:
    """Train the judge and write it (weights, tokenizer, ``judge.json``) to ``directory``.
    ``base``: the model it starts from (default: this seed's ``builtin:toyworld-pretrained``).
    Returns the build record."""
    from lightning_rlhf.rewards.judge import write_judge_file

    world = world or WorldConfig(seed=config.seed)
    base = base or resolve(seeded("builtin:toyworld-pretrained", config.seed))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base)
    pairs = gold_labelled(corpus.answer_pairs(config.pairs, seed=judge_prompt_seed(config.seed)))
    max_length = world.max_position_embeddings - 1  # the verdict token needs a position too
    examples = judge_examples(tokenizer, pairs, max_length)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    losses = train_causal_lm(model, examples, tokenizer.pad_token_id, config.steps, config.batch_size, config.lr,
                             seed=random.Random(f"judge-batches-{config.seed}").getrandbits(63),
                             progress=f"toy judge (seed {config.seed}): training")
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_judge_file(directory, "pairwise", template=TEMPLATE, choices=list(CHOICES), chat_template=False,
                     response_prefix="", rubric="", max_length=max_length, max_answer_tokens=config.max_answer_tokens)
    record = {"config": asdict(config), "pairs": len(pairs), "examples": len(examples), "parameters": count_parameters(model),
              "first_loss": losses[0], "final_loss": sum(losses[-20:]) / len(losses[-20:])}
    (directory / "toyworld.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def judge_prompt_seed(seed: int) -> int:
    """The judge's training pairs are drawn apart from the SFT model's (``sft-<seed>``)."""
    return 7919 + seed


def agreement(judge, policy, tokenizer, prompts: list[str], max_new_tokens: int = 32, seed: int = 0) -> dict:
    """How often the judge picks the gold winner of two policy samples per prompt (gold
    ties left out), and its mean confidence in its pick."""
    pairs = policy_pairs(policy, tokenizer, prompts, max_new_tokens, seed)
    preferred = judge.probability_first_better([p for p, *_ in pairs], [a for _, a, _, _ in pairs], [b for *_, b, _ in pairs])
    correct = [(p > 0.5) == (gap > 0) for p, (*_, gap) in zip(preferred.tolist(), pairs)]
    return {"pairs": len(pairs), "agreement": sum(correct) / len(correct),
            "mean_confidence": float((preferred - 0.5).abs().mean() * 2)}


def write_judge(directory: Path, seed: int = 0) -> None:
    """``builtin:toyworld-judge`` (and ``-seed<N>``), named in ``lightning_rlhf.models.builtin``."""
    build_judge(directory, JudgeConfig(seed=seed))
