"""Sampling: left padding, EOS stopping, seeds, n per prompt; log-probs of sampled tokens."""

import copy

import pytest
import torch

from lightning_rlhf.generation import encode_prompts, sample, sequence_logps


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_causal_lm

    return load_causal_lm(ModelSettings(name_or_path="builtin:tiny-llama"), trainable=False)


def test_left_padding_gives_the_same_greedy_completion(tiny_model, tiny_tokenizer):
    alone = sample(tiny_model, tiny_tokenizer, ["hi"], temperature=0, max_new_tokens=12)[0][0]
    batched = sample(tiny_model, tiny_tokenizer, ["a much longer prompt than the other", "hi"],
                     temperature=0, max_new_tokens=12)[1][0]
    assert alone.token_ids == batched.token_ids and alone.text == batched.text
    assert tiny_tokenizer.padding_side == "right", "sampling must not change the caller's tokenizer"


def test_stops_at_eos_and_drops_it_from_the_text(tiny_model, tiny_tokenizer):
    free = sample(tiny_model, tiny_tokenizer, ["hello"], temperature=0, max_new_tokens=12)[0][0]
    assert not free.finished and free.length == 12
    # Make the token the model greedily writes third an end-of-sequence token.
    stop = free.token_ids[2]
    first = free.token_ids.index(stop)
    original = tiny_model.generation_config.eos_token_id
    tiny_model.generation_config.eos_token_id = [original, stop]
    try:
        stopped = sample(tiny_model, tiny_tokenizer, ["hello"], temperature=0, max_new_tokens=12)[0][0]
    finally:
        tiny_model.generation_config.eos_token_id = original
    assert stopped.finished
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.text == tiny_tokenizer.decode(free.token_ids[:first], skip_special_tokens=True)


def test_seed_repeats_and_n_per_prompt(tiny_model, tiny_tokenizer):
    first = sample(tiny_model, tiny_tokenizer, ["ab", "cd"], n=3, max_new_tokens=6, seed=7)
    again = sample(tiny_model, tiny_tokenizer, ["ab", "cd"], n=3, max_new_tokens=6, seed=7)
    other = sample(tiny_model, tiny_tokenizer, ["ab", "cd"], n=3, max_new_tokens=6, seed=8)
    ids = lambda result: [[s.token_ids for s in group] for group in result]  # noqa: E731
    assert [len(group) for group in first] == [3, 3]
    assert ids(first) == ids(again) and ids(first) != ids(other)


def test_sequence_logps_match_a_token_by_token_sum(tiny_model, tiny_tokenizer):
    prompts, completions = ["hi", "a longer prompt"], [[70, 71, 72], [80, 81]]
    batched = sequence_logps(tiny_model, tiny_tokenizer, prompts, completions)
    for prompt, completion, value in zip(prompts, completions, batched):
        ids = tiny_tokenizer(prompt)["input_ids"] + completion
        with torch.no_grad():
            logps = tiny_model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        n_prompt = len(ids) - len(completion)
        expected = sum(logps[n_prompt - 1 + t, token].item() for t, token in enumerate(completion))
        assert value.item() == pytest.approx(expected, abs=1e-4)


def test_prompts_get_one_bos_whether_or_not_their_text_has_it(tiny_tokenizer):
    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(tiny_tokenizer)  # a tokenizer that adds BOS, as Llama's does
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)])
    assert tokenizer(tokenizer.bos_token + "Hello")["input_ids"].count(bos) == 2  # what a plain call would give
    plain, rendered = encode_prompts(tokenizer, ["Hello", tokenizer.bos_token + "Hello"])
    assert plain == rendered and plain[0] == bos and plain.count(bos) == 1
