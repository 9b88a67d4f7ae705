"""The decoding engine (``online.engine: decode``): one prefill per prompt, finished rows
dropped from the batch; it must sample the distribution the trainer scores, and the
tokens it reports must be the ones whose log-probs it reports."""

from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_rlhf.decode_engine import DecodeEngine, sample_next
from lightning_rlhf.engine import HFEngine, SamplingSettings
from lightning_rlhf.generation import encode_prompts, sequence_logps
from lightning_rlhf.models.builtin import resolve

PROMPTS = ["How was the film?", "Name a colour.", "Say hi.", "A much longer prompt than the others, to pad."]


@pytest.fixture
def model(_model_cache):
    return AutoModelForCausalLM.from_pretrained(resolve("builtin:tiny-llama")).eval()


def frequent_tokens_as_eos(model, tokenizer) -> set[int]:
    """Make the 24 tokens the (untrained, near-uniform) model samples most often EOS tokens,
    so that rows finish at many different steps and the engine drops them from its batch
    along the way."""
    groups = HFEngine(model, tokenizer, batch_size=64).generate(encode_prompts(tokenizer, PROMPTS), 8, SamplingSettings(max_new_tokens=8), seed=0)
    tokens = [t for t, _ in Counter(t for g in groups for s in g for t in s.token_ids).most_common(24)]
    model.generation_config.eos_token_id = tokens
    return {*tokens, tokenizer.eos_token_id}  # the tokenizer's own ends a sample too


def test_greedy_decoding_equals_transformers_generate(model, tiny_tokenizer):
    prompt_ids = encode_prompts(tiny_tokenizer, PROMPTS)
    greedy = SamplingSettings(temperature=0, max_new_tokens=10)
    ours = DecodeEngine(model, tiny_tokenizer, batch_size=6).generate(prompt_ids, 2, greedy)
    theirs = HFEngine(model, tiny_tokenizer, batch_size=6).generate(prompt_ids, 2, greedy)
    assert [[s.token_ids for s in g] for g in ours] == [[s.token_ids for s in g] for g in theirs]


@pytest.mark.parametrize("batch_size", [7, 64])  # one prompt per batch (7 // 4 = 1), all in one
def test_the_sampled_tokens_log_probs_are_the_trainers_as_rows_finish_and_leave(model, tiny_tokenizer, batch_size):
    """Every sample's reported log-probs equal the trainer's right-padded forward of the same
    tokens: the prompt's cache repeated per sample, positions, masks and the dropping of
    finished rows (EOS made frequent, so rows finish at many steps) keep each row's own."""
    eos = frequent_tokens_as_eos(model, tiny_tokenizer)
    engine = DecodeEngine(model, tiny_tokenizer, batch_size=batch_size)
    groups = engine.generate(encode_prompts(tiny_tokenizer, PROMPTS), 4, SamplingSettings(max_new_tokens=16), seed=1, return_logps=True)
    samples = [s for g in groups for s in g]
    assert len(groups) == len(PROMPTS) and all(len(g) == 4 for g in groups)
    finished = [s.length for s in samples if s.finished]
    assert len(set(finished)) >= 3 and len(finished) < len(samples)  # rows left the batch at several steps; some ran to the end
    assert all(s.token_ids[-1] in eos and not eos & set(s.token_ids[:-1]) for s in samples if s.finished)
    scored = sequence_logps(model, tiny_tokenizer, [p for p in PROMPTS for _ in range(4)], [s.token_ids for s in samples])
    torch.testing.assert_close(torch.tensor([sum(s.logps) for s in samples]), scored, atol=1e-4, rtol=1e-5)


def test_a_seed_repeats_the_samples_and_leaves_the_callers_random_stream_alone(model, tiny_tokenizer):
    engine = DecodeEngine(model, tiny_tokenizer)
    prompt_ids = encode_prompts(tiny_tokenizer, PROMPTS)
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    first = engine.generate(prompt_ids, 3, SamplingSettings(max_new_tokens=8), seed=5)
    assert torch.rand(1) == before
    second = engine.generate(prompt_ids, 3, SamplingSettings(max_new_tokens=8), seed=5)
    assert [[s.token_ids for s in g] for g in first] == [[s.token_ids for s in g] for g in second]
    other = engine.generate(prompt_ids, 3, SamplingSettings(max_new_tokens=8), seed=6)
    assert [[s.token_ids for s in g] for g in first] != [[s.token_ids for s in g] for g in other]


def test_the_sampler_draws_from_softmax_of_logits_over_temperature_truncated_as_asked():
    """Frequencies of 40,000 draws from fixed logits against the distribution: full at T = 0.5,
    top-k 2, and top-p 0.7 (transformers' rule: the smallest set of likeliest tokens whose
    mass reaches 0.7). 4.5 standard errors is a bound a correct sampler crosses about once
    in 10^5 draws of this test."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(40_000, 1)
    base = torch.softmax(logits[0], -1)  # 0.531, 0.195, 0.118, 0.072, 0.026
    cases = {
        SamplingSettings(temperature=0.5): torch.softmax(logits[0] / 0.5, -1),
        SamplingSettings(top_k=2): torch.tensor([base[0], base[1], 0, 0, 0]) / (base[0] + base[1]),
        SamplingSettings(top_p=0.7): torch.tensor([base[0], base[1], 0, 0, 0]) / (base[0] + base[1]),  # 0.531 < 0.7 <= 0.726
    }
    torch.manual_seed(0)
    for settings, expected in cases.items():
        tokens, logps = sample_next(logits, settings, return_logps=True)
        frequencies = torch.bincount(tokens, minlength=5).float() / len(tokens)
        error = (expected * (1 - expected) / len(tokens)).sqrt()
        assert ((frequencies - expected).abs() <= 4.5 * error + 1e-9).all(), (settings, frequencies, expected)
        torch.testing.assert_close(logps, expected.log()[tokens])


def test_the_online_module_samples_through_the_engine_it_is_given(tiny_tokenizer, one_thread):
    """``online.engine: decode`` builds this engine for the module's rollouts."""
    from lightning_rlhf import create_algorithm
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.rewards import FunctionReward

    module = OnlinePolicyModule(
        policy=ModelSettings(name_or_path="builtin:tiny-llama"), algorithm=create_algorithm("grpo", num_generations=2, max_new_tokens=4),
        reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"), online=OnlineSettings(engine="decode"),
    )
    module.configure_model()
    rollout = module.generate(encode_prompts(module.tokenizer, PROMPTS[:2]), max_new_tokens=4, n=2)
    assert isinstance(module.rollout_engine, DecodeEngine) and rollout.lengths.shape == (4,)
    with pytest.raises(ValueError, match="online.engine must be one of"):
        OnlineSettings(engine="vllm")


@pytest.mark.parametrize("eos_share", [0.1, 0.5, 0.9])
def test_the_batch_shrinks_to_the_unfinished_rows_and_stops_when_none_are_left(model, tiny_tokenizer, eos_share):
    """With a share of the vocabulary as EOS, rows finish together, one by one, or all at
    once: the model never runs on an empty batch, every step runs on unfinished rows only
    once the dropped share is reached, and every sample ends at its first EOS."""
    vocabulary = model.config.vocab_size
    eos = set(range(0, vocabulary, round(1 / eos_share)))
    model.generation_config.eos_token_id = sorted(eos)
    eos.add(tiny_tokenizer.eos_token_id)  # the tokenizer's own ends a sample too
    rows_per_forward = []
    model.register_forward_pre_hook(lambda module, args, kwargs: rows_per_forward.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    engine = DecodeEngine(model, tiny_tokenizer, batch_size=64)
    for seed in range(4):
        rows_per_forward.clear()
        groups = engine.generate(encode_prompts(tiny_tokenizer, PROMPTS), 8, SamplingSettings(max_new_tokens=24), seed=seed)
        samples = [s for g in groups for s in g]
        assert min(rows_per_forward) > 0 and rows_per_forward[0] == len(PROMPTS)  # one prefill row per prompt
        assert rows_per_forward[1:] == sorted(rows_per_forward[1:], reverse=True)
        steps_run = len(rows_per_forward)  # the prefill, then one forward per decoded token but the last
        assert steps_run <= max(s.length for s in samples)
        for s in samples:
            assert s.finished == (s.token_ids[-1] in eos) and not eos & set(s.token_ids[:-1])


def test_rows_that_all_finish_while_a_finished_row_is_still_in_the_batch_end_the_loop(model, tiny_tokenizer, monkeypatch):
    """Scripted draws: one of 8 rows writes EOS first (too few to shrink the batch for), then
    the other 7 together while the finished one draws on; nothing is left to decode."""
    from lightning_rlhf import decode_engine

    eos, other = tiny_tokenizer.eos_token_id, 7
    script = iter([[eos] + [other] * 7, [other] + [eos] * 7])
    forwards = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    monkeypatch.setattr(decode_engine, "sample_next", lambda logits, settings, return_logps: (torch.tensor(next(script)), None))
    (group,) = DecodeEngine(model, tiny_tokenizer).generate(encode_prompts(tiny_tokenizer, PROMPTS[:1]), 8, SamplingSettings(max_new_tokens=5))
    assert [s.token_ids for s in group] == [[eos]] + [[other, eos]] * 7 and all(s.finished for s in group)
    assert forwards == [1, 8]  # the prompt's prefill, one decoding step; none on an empty batch


def test_the_preallocated_cache_holds_what_a_growing_one_holds():
    """Keys and values written in place equal transformers' concatenated ones, through
    repeating rows (one prefill per prompt) and selecting them (finished rows dropped)."""
    from transformers.cache_utils import DynamicCache

    from lightning_rlhf.decode_engine import PreallocatedLayer, preallocate

    torch.manual_seed(0)
    grown, allocated = DynamicCache(), DynamicCache()
    prefill = [(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)) for _ in range(2)]
    for layer, (k, v) in enumerate(prefill):
        grown.update(k, v, layer)
        allocated.update(k.clone(), v.clone(), layer)
    preallocate(allocated, capacity=5 + 3)
    assert all(isinstance(layer, PreallocatedLayer) for layer in allocated.layers)
    for cache in (grown, allocated):
        cache.batch_repeat_interleave(2)
    for step in range(3):
        columns = [(torch.randn(4 - step, 3, 1, 4), torch.randn(4 - step, 3, 1, 4)) for _ in range(2)]
        for layer, (k, v) in enumerate(columns):
            expected = grown.update(k, v, layer)
            torch.testing.assert_close(allocated.update(k, v, layer), expected, rtol=0, atol=0)
        keep = torch.arange(1, 4 - step)  # the first row finished
        grown.batch_select_indices(keep)
        allocated.batch_select_indices(keep)
        assert allocated.get_seq_length() == grown.get_seq_length() == 5 + step + 1
    with pytest.raises(RuntimeError, match="holds 8 positions, 9 asked"):
        allocated.update(torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4), 0)


def test_draw_never_picks_a_zero_probability_entry_and_follows_the_distribution():
    from lightning_rlhf.decode_engine import draw

    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0]]).repeat(50_000, 1)
    tokens = draw(probs)
    counts = torch.bincount(tokens, minlength=6).float() / len(tokens)
    assert counts[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(counts[[1, 3, 4]], torch.tensor([0.5, 0.25, 0.25]), atol=0.01, rtol=0)
