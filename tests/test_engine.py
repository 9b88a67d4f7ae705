"""The rollout engine samples what it is told and nothing the checkpoint says, and the
log-probs the sampler used are the ones the trainer computes."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_rlhf import create_algorithm
from lightning_rlhf.engine import HFEngine, SamplingSettings
from lightning_rlhf.generation import encode_prompts, sample, sequence_logps
from lightning_rlhf.models.builtin import resolve
from lightning_rlhf.models.config import LoraSettings, ModelSettings
from lightning_rlhf.models.critic import CriticSettings
from lightning_rlhf.models.dropout import disable_dropout, dropout_left
from lightning_rlhf.modules.online_policy import OnlinePolicyModule
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.rewards import FunctionReward

PROMPTS = ["How was the film?", "Name a colour.", "Say hi."]


@pytest.fixture
def model(_model_cache):
    return AutoModelForCausalLM.from_pretrained(resolve("builtin:tiny-llama")).eval()


def poison(model, tokenizer) -> None:
    """What a real checkpoint's generation_config.json may hold (Qwen: top_k 20, top_p 0.8,
    repetition_penalty 1.05; others: suppress_tokens, no_repeat_ngram_size, min_new_tokens)."""
    letters = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"]
    config = model.generation_config
    config.suppress_tokens = letters[2:]  # only "a" and "b" would be left
    config.top_k, config.top_p, config.repetition_penalty = 20, 0.8, 1.5
    config.no_repeat_ngram_size, config.min_new_tokens = 1, 8


def test_a_checkpoints_generation_config_does_not_leak_into_sampling(model, tiny_tokenizer):
    clean = sample(model, tiny_tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=3)
    poison(model, tiny_tokenizer)
    poisoned = sample(model, tiny_tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=3)
    assert [[s.token_ids for s in group] for group in poisoned] == [[s.token_ids for s in group] for group in clean]
    assert len({c for group in poisoned for s in group for c in s.text}) > 2  # not only "a" and "b"
    assert model.generation_config.top_k == 20  # the checkpoint's config is put back


def test_the_sampler_log_probs_equal_what_the_trainer_computes(model, tiny_tokenizer):
    poison(model, tiny_tokenizer)
    engine = HFEngine(model, tiny_tokenizer, batch_size=4)
    groups = engine.generate(encode_prompts(tiny_tokenizer, PROMPTS), 2, SamplingSettings(max_new_tokens=12), seed=0, return_logps=True)
    samples = [s for group in groups for s in group]
    assert all(s.logps is not None and len(s.logps) == s.length for s in samples)
    scored = sequence_logps(model, tiny_tokenizer, [p for p in PROMPTS for _ in range(2)], [s.token_ids for s in samples])
    sampler = torch.tensor([sum(s.logps) for s in samples])
    torch.testing.assert_close(sampler, scored, atol=1e-4, rtol=1e-5)


def test_truncated_sampling_is_what_the_sampler_reports(model, tiny_tokenizer):
    """With top-p the sampler's distribution is renormalised over the nucleus: each sampled
    token is at least as likely under it as under the full softmax."""
    engine = HFEngine(model, tiny_tokenizer)
    prompt_ids = encode_prompts(tiny_tokenizer, PROMPTS)
    truncated = [s for g in engine.generate(prompt_ids, 2, SamplingSettings(top_p=0.5, max_new_tokens=8), seed=0, return_logps=True) for s in g]
    full = sequence_logps(model, tiny_tokenizer, [p for p in PROMPTS for _ in range(2)], [s.token_ids for s in truncated])
    sampler = torch.tensor([sum(s.logps) for s in truncated])
    assert (sampler >= full - 1e-5).all() and (sampler > full + 1e-3).any()


def test_sampling_settings_are_checked_and_ppo_refuses_truncation():
    for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingSettings(**bad)
    with pytest.raises(ValueError, match="top_p must be 1"):
        create_algorithm("ppo", top_p=0.9)


def test_disable_dropout_reaches_float_attention_dropout_and_lora(model):
    model.config.attention_dropout = 0.3
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.3
    model.model.layers[0].mlp.act_dropout = torch.nn.Dropout(0.2)
    assert len(dropout_left(model)) == len(model.model.layers) + 1
    disable_dropout(model)
    assert dropout_left(model) == [] and model.config.attention_dropout == 0.0


def test_the_critic_is_built_without_dropout(tiny_tokenizer):
    """A separate LoRA critic (LoRA dropout 0.05 by default) is trained and read with dropout off."""
    lora = LoraSettings(r=4, alpha=8)
    critic = CriticSettings(model=ModelSettings(name_or_path="builtin:tiny-llama", lora=lora))
    module = OnlinePolicyModule(ModelSettings(name_or_path="builtin:tiny-llama", lora=lora), create_algorithm("ppo"),
                                reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"), critic=critic)
    module.configure_model()
    assert dropout_left(module.policy) == [] and dropout_left(module.value_model) == []


@pytest.mark.parametrize("family", ["granite", "cohere"])
def test_models_that_scale_their_logits_are_scored_as_sampled(tmp_path, tiny_tokenizer, family):
    """Granite divides its logits by ``logits_scaling``, Cohere multiplies them by
    ``logit_scale``: the trainer's log-probs are those of the model's own forward."""
    from transformers import CohereConfig, CohereForCausalLM, GraniteConfig, GraniteForCausalLM

    from lightning_rlhf.ops import logit_multiplier, naive_logps
    from lightning_rlhf.testing import make_batch

    shape = dict(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, pad_token_id=tiny_tokenizer.pad_token_id)
    torch.manual_seed(0)
    if family == "granite":
        model = GraniteForCausalLM(GraniteConfig(**shape, logits_scaling=4.0))
    else:
        model = CohereForCausalLM(CohereConfig(**shape, logit_scale=0.25))
    assert logit_multiplier(model.config) == 0.25
    model.save_pretrained(tmp_path / family)
    tiny_tokenizer.save_pretrained(tmp_path / family)
    module = PolicyModule(ModelSettings(name_or_path=str(tmp_path / family)), create_algorithm("dpo"))
    module.configure_model()
    batch = make_batch("preference", module.tokenizer)
    with torch.no_grad():
        expected = naive_logps(module.policy(input_ids=batch["input_ids"]).logits, batch["input_ids"], batch["completion_mask"])
        for temperature in (1.0, 0.7):
            scored = module.policy_logps(batch, temperature=temperature)
            if temperature == 1.0:
                torch.testing.assert_close(scored.sum(), expected.sum(-1), atol=1e-4, rtol=1e-5)
            else:  # T applies to the scaled logits the model samples from
                logits = module.policy(input_ids=batch["input_ids"]).logits / temperature
                torch.testing.assert_close(scored.sum(), naive_logps(logits, batch["input_ids"], batch["completion_mask"]).sum(-1), atol=1e-4, rtol=1e-5)


class RecordingEngine:
    """The Hugging Face engine, recording what each call was asked: a serving engine reads
    each prompt once for its n samples only if the prompts reach it unrepeated."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompt_ids, n, settings, seed=None, return_logps=False):
        self.calls.append(([list(p) for p in prompt_ids], n))
        return self.engine.generate(prompt_ids, n, settings, seed, return_logps)

    def weights_changed(self):
        self.engine.weights_changed()


def test_generate_n_samples_per_prompt_reaches_the_engine_once_per_prompt(tiny_tokenizer, one_thread):
    """ctx.generate(prompts, n=3): the engine gets each prompt once with n = 3, and the rollout
    is prompt-major and the very one of the prompts repeated 3 times in the same random stream."""
    module = OnlinePolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("grpo", num_generations=3),
                                reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
    module.configure_model()
    prompt_ids = encode_prompts(module.tokenizer, PROMPTS[:2])
    module.rollout_engine = RecordingEngine(HFEngine(module.policy, module.tokenizer, batch_size=4))
    torch.manual_seed(0)
    grouped = module.generate(prompt_ids, 1.0, 1.0, 8, n=3)
    assert module.rollout_engine.calls == [(prompt_ids, 3)]
    torch.manual_seed(0)
    repeated = module.generate([ids for ids in prompt_ids for _ in range(3)], 1.0, 1.0, 8)
    for key, value in grouped.batch.items():
        if key != "group_index":
            assert torch.equal(value, repeated.batch[key]), key
    assert grouped.batch["group_index"].tolist() == [0, 0, 0, 1, 1, 1]  # which rows share a prompt
    assert repeated.batch["group_index"].tolist() == list(range(6))
    assert grouped.completions == repeated.completions and len(set(grouped.completions)) > 2
    assert torch.equal(grouped.finished, repeated.finished) and torch.equal(grouped.lengths, repeated.lengths)
    for row in range(6):
        prompt = prompt_ids[row // 3]
        assert grouped.batch["input_ids"][row, : len(prompt)].tolist() == prompt


def test_an_engine_that_returns_the_wrong_number_of_samples_is_an_error(tiny_tokenizer):
    from lightning_rlhf.rollout import generate_rollout

    class OneShort(RecordingEngine):
        def generate(self, prompt_ids, n, settings, seed=None, return_logps=False):
            return [group[:-1] for group in super().generate(prompt_ids, n, settings, seed, return_logps)]

    model = AutoModelForCausalLM.from_pretrained(resolve("builtin:tiny-llama")).eval()
    engine = OneShort(HFEngine(model, tiny_tokenizer))
    with pytest.raises(ValueError, match="n = 2"):
        generate_rollout(engine, tiny_tokenizer, encode_prompts(tiny_tokenizer, PROMPTS), SamplingSettings(max_new_tokens=4),
                         torch.device("cpu"), n=2)
