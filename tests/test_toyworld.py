"""The toy world: a seeded corpus, its tokenizer, the VADER gold reward and the built models.

The models are built at a tiny size (a few seconds); the full-size build is measured by
hand, not here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from lightning_rlhf.models.builtin import builtin_names
from lightning_rlhf.toyworld import corpus
from lightning_rlhf.toyworld.gold import gold_reward, sentiment_score
from lightning_rlhf.toyworld.models import WorldConfig, build_world
from lightning_rlhf.toyworld.tokenizer import build_tokenizer

TINY = WorldConfig(
    tokenizer_texts=1_000,
    vocab_size=400,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    pretrain_texts=400,
    pretrain_row_length=32,
    pretrain_steps=4,
    pretrain_batch_size=8,
    sft_pairs=100,
    sft_steps=3,
    sft_batch_size=8,
    max_new_tokens=8,
)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("toyworld")
    return {
        "seed0": build_world(root / "seed0", TINY),
        "seed0-again": build_world(root / "seed0-again", TINY),
        "seed1": build_world(root / "seed1", WorldConfig(**{**TINY.__dict__, "seed": 1})),
    }


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_same_seed_builds_identical_tokenizer_and_weights(worlds):
    for stage in (0, 1):  # pretrained, sft
        first, again = worlds["seed0"][stage], worlds["seed0-again"][stage]
        assert (first / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
        assert _same_weights(first, again)


def test_other_seed_builds_other_weights(worlds):
    assert not _same_weights(worlds["seed0"][0], worlds["seed1"][0])
    assert not _same_weights(worlds["seed0"][1], worlds["seed1"][1])


def test_fine_tuning_changes_the_pretrained_weights(worlds):
    pretrained, sft = worlds["seed0"]
    assert not _same_weights(pretrained, sft)


def test_built_model_loads_and_samples_with_its_own_defaults(worlds):
    sft = worlds["seed0"][1]
    tokenizer = AutoTokenizer.from_pretrained(sft)
    model = AutoModelForCausalLM.from_pretrained(sft)
    config = model.generation_config
    assert config.do_sample
    assert (config.eos_token_id, config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    batch = tokenizer(corpus.prompts(2, "heldout"), return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**batch)
    assert output.shape[1] <= batch["input_ids"].shape[1] + TINY.max_new_tokens
    record = json.loads((sft / "toyworld.json").read_text())
    assert record["config"]["seed"] == 0 and record["parameters"] > 0


def test_builtins_are_registered():
    assert {"toyworld", "toyworld-pretrained"} <= set(builtin_names())


def test_gold_reward_on_known_sentences():
    assert sentiment_score("The film was wonderful, and the music was lovely.") > 0.5
    assert sentiment_score("The meal was awful and the service was terrible.") < -0.5
    assert abs(sentiment_score("The train left the station at ten past nine.")) < 0.05


def test_gold_reward_scores_the_completion_only():
    prompts = ["I hated this awful, terrible film; it", "What a wonderful, lovely day; it"]
    completions = [" was over just after ten.", " was a horrible mess."]
    neutral, negative = gold_reward(prompts, completions)
    assert neutral == 0.0
    assert negative < -0.5
    with pytest.raises(ValueError):
        gold_reward(prompts, completions[:1])


def test_heldout_prompts_never_reach_training():
    heldout = set(corpus.prompts(300, "heldout", seed=0))
    assert len(heldout) == 300
    assert heldout.isdisjoint(corpus.prompts(1_000, "train", seed=0))
    assert heldout.isdisjoint(corpus.prompts(1_000, "train", seed=1))
    assert heldout.isdisjoint(prompt for prompt, _ in corpus.sft_pairs(1_000, seed=0))
    for text in corpus.pretraining_texts(1_000, seed=0):
        assert not any(text.startswith(prompt + " ") for prompt in heldout)
    assert all(corpus.split_of(prompt) == "heldout" for prompt in heldout)


def test_corpus_is_seeded_and_both_sentiments_are_common():
    assert corpus.pretraining_texts(50, seed=0) == corpus.pretraining_texts(50, seed=0)
    assert corpus.pretraining_texts(50, seed=0) != corpus.pretraining_texts(50, seed=1)
    scores = [sentiment_score(c) for _, c in corpus.sft_pairs(2_000, seed=0)]
    positive = sum(s > 0.05 for s in scores) / len(scores)
    negative = sum(s < -0.05 for s in scores) / len(scores)
    assert 0.38 < positive < 0.55 and 0.38 < negative < 0.55
    assert 1 - positive - negative > 0.05  # some neutral texts too
    assert all(completion.startswith(" ") for _, completion in corpus.sft_pairs(100))


def test_sentiment_words_are_the_ones_vader_scores():
    rng = random.Random(0)
    signs = {"positive": [], "negative": []}
    for _ in range(500):
        subject = corpus.random_subject(rng)
        assert sentiment_score(corpus.neutral_completion(rng, subject)) == 0.0
        assert sentiment_score(corpus.random_prompt(rng, subject)) == 0.0
        for sentiment, found in signs.items():
            found.append(sentiment_score(corpus.one_sided_completion(rng, subject, sentiment)))
    # VADER's rules misread a rare sentence; nearly all must score on the intended side.
    assert sum(s > 0.05 for s in signs["positive"]) >= 0.99 * len(signs["positive"])
    assert sum(s < -0.05 for s in signs["negative"]) >= 0.99 * len(signs["negative"])


def test_jsonl_writers(tmp_path):
    prompts_path = corpus.write_prompts(tmp_path / "heldout.jsonl", 5, split="heldout", seed=3)
    rows = [json.loads(line) for line in prompts_path.read_text().splitlines()]
    assert len(rows) == 5 and all(set(row) == {"prompt"} for row in rows)
    sft_path = corpus.write_sft(tmp_path / "sft.jsonl", 4, seed=3)
    rows = [json.loads(line) for line in sft_path.read_text().splitlines()]
    assert len(rows) == 4 and all(set(row) == {"prompt", "completion"} for row in rows)
    with pytest.raises(ValueError):
        corpus.prompts(1, split="test")


def test_tokenizer_round_trips_and_splits_cleanly_at_the_completion():
    tokenizer = build_tokenizer(seed=0, num_texts=1_000, vocab_size=400)
    texts = corpus.pretraining_texts(50, seed=2) + ["Unicode café ✓, two  spaces\nand a new line."]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    for prompt, completion in corpus.sft_pairs(50, seed=2):
        together = tokenizer(prompt + completion)["input_ids"]
        apart = tokenizer(prompt)["input_ids"] + tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert together == apart


def test_toy_judge_is_trained_on_both_orders_and_loads_as_a_judge(worlds, tmp_path):
    from lightning_rlhf.rewards.judge import load_judge
    from lightning_rlhf.toyworld.judge import JudgeConfig, build_judge, gold_labelled, judge_examples, judge_text

    pretrained, _ = worlds["seed0"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(pretrained)
    pairs = gold_labelled([("The film was", " wonderful and warm.", " dull and awful."),
                           ("The film was", " fine.", " fine.")])  # the gold tie is left out
    assert len(pairs) == 1
    examples = judge_examples(tokenizer, pairs, max_length=127)
    # each pair twice, answered with the letter of the gold winner's position
    answers = [tokenizer.decode([t for t in labels if t != -100]) for _, labels in examples]
    assert answers == ["A<|eos|>", "B<|eos|>"]
    assert tokenizer.decode(examples[0][0]).startswith("<|bos|>" + judge_text("The film was", " wonderful and warm.", " dull and awful."))

    record = build_judge(tmp_path / "judge", JudgeConfig(pairs=40, steps=2, batch_size=4), TINY, base=str(pretrained))
    assert record["examples"] == 2 * record["pairs"] > 0
    judge = load_judge(str(tmp_path / "judge"))
    assert judge.choices == ["A", "B"] and judge.max_length == TINY.max_position_embeddings - 1
    p = judge.probability_first_better(["The film was"], [" wonderful."], [" awful."])
    assert 0 < float(p) < 1
