"""A group's completions run as one row of their real tokens (``packed_attention``) give the
padded prompt-once layout's hidden states and gradients, on Llama and on Qwen2 with
grouped-query attention, and only where the model allows it."""

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen2Model
from transformers.modeling_outputs import BaseModelOutput

from lightning_rlhf import create_algorithm, packed_attention
from lightning_rlhf.data import shared_prompt
from lightning_rlhf.data.shared_prompt import group_prefix_hidden, group_prefix_layout
from lightning_rlhf.engine import cache_argument, model_cache
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.policy import PolicyModule
from tests.test_shared_prompt import group_batch

PROMPTS = [[5, 6, 7], [14], [21, 22, 23, 24]]
COMPLETIONS = [[8, 9], [10, 11, 12, 13], [30], [15, 16, 17], [18], [19, 20], [25, 26, 27, 28, 29], [31, 32]]
GROUPS = [0, 0, 0, 1, 1, 1, 2, 2]


def laid_out(scored=(1, 1, 1, 1, 0, 1, 1, 1)):
    usual = group_batch([(PROMPTS[g], c) for g, c in zip(GROUPS, COMPLETIONS)], GROUPS, scored=list(scored))
    return {**usual, **group_prefix_layout(usual)}


def tiny_qwen2(attention: str) -> Qwen2Model:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, attn_implementation=attention)
    return Qwen2Model(config)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_completions_give_the_padded_hidden_states_and_gradients_with_grouped_query_attention(attention):
    decoder = tiny_qwen2(attention)
    batch = laid_out()
    index_grads = torch.randn(batch[shared_prompt.GROUP + "index"].shape[0], decoder.config.hidden_size)
    results = []
    for config in (None, decoder.config):  # padded rows, then packed
        decoder.zero_grad()
        hidden, index = group_prefix_hidden(decoder, batch, cache_argument(decoder), config)
        read = hidden.index_select(0, index)
        (read * index_grads).sum().backward()
        results.append((hidden.shape[0], read.detach(), torch.cat([p.grad.flatten() for p in decoder.parameters()])))
    (padded_rows, padded, padded_grads), (packed_rows, packed, packed_grads) = results
    prompts = batch[shared_prompt.GROUP + "prompt_ids"].numel()
    real = int(batch[shared_prompt.GROUP + "completion_mask"].sum())
    assert packed_rows == prompts + real < padded_rows  # only real completion tokens were computed
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_grads, padded_grads, atol=1e-5, rtol=1e-4)
    assert decoder.config._attn_implementation == attention  # the switch lasts the packed forward only


def test_policy_logps_take_the_packed_path(monkeypatch):
    """The module's log-probs run packed for a Llama policy (the usual-layout comparison of
    ``test_shared_prompt`` then covers the packed path) and padded where it is compiled."""
    calls = []
    original = packed_attention.packed_completions_hidden
    monkeypatch.setattr(packed_attention, "packed_completions_hidden",
                        lambda *args: calls.append(args[-1].shape[0]) or original(*args))
    module = PolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("dpo"))
    module.configure_model()
    batch = laid_out()
    module._logps(module.policy, batch)
    assert calls == [int(batch[shared_prompt.GROUP + "completion_mask"].sum())]


def test_which_models_pack():
    assert packed_attention.packs_completions(LlamaConfig(attn_implementation="sdpa"))
    assert packed_attention.packs_completions(Qwen2Config(attn_implementation="eager"))  # use_sliding_window is off
    assert not packed_attention.packs_completions(Qwen2Config(attn_implementation="sdpa", use_sliding_window=True,
                                                              layer_types=["sliding_attention"] * 2, num_hidden_layers=2))
    assert not packed_attention.packs_completions(MistralConfig(attn_implementation="sdpa", sliding_window=16))
    assert not packed_attention.packs_completions(LlamaConfig(attn_implementation="flex_attention"))
    # dynamic NTK scaling reads the batch's longest position, which packing changes
    dynamic = LlamaConfig(attn_implementation="sdpa", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    assert not packed_attention.packs_completions(dynamic)
    linear = LlamaConfig(attn_implementation="sdpa", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    assert packed_attention.packs_completions(linear)
    from transformers import GPT2Config

    assert not packed_attention.packs_completions(GPT2Config(attn_implementation="sdpa"))


def test_a_decoder_that_bypasses_the_packed_attention_is_refused():
    decoder = tiny_qwen2("sdpa")
    batch = laid_out()
    cache = model_cache(decoder(input_ids=batch[shared_prompt.GROUP + "prompt_ids"], use_cache=True))

    def ignores_the_packing(input_ids, **kwargs):  # a model whose layers never call the attention interface
        return BaseModelOutput(last_hidden_state=decoder.embed_tokens(input_ids))

    with pytest.raises(RuntimeError, match="ran in 0 of 2 layers"):
        packed_attention.packed_completions_hidden(
            ignores_the_packing, decoder.config, cache, batch[shared_prompt.GROUP + "prompt_mask"],
            batch[shared_prompt.GROUP + "prompt_of"], batch[shared_prompt.GROUP + "completion_ids"],
            batch[shared_prompt.GROUP + "tokens"])
    assert decoder.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("four_bit", [False, True])
def test_a_lora_policy_and_its_adapter_free_reference_run_packed_as_padded(four_bit, monkeypatch):
    """LoRA layers (and a 4-bit base) work token by token too: the policy's log-probs and
    gradients, and the reference's (adapters off), are the padded layout's."""
    from lightning_rlhf.models.config import LoraSettings

    torch.manual_seed(0)
    module = PolicyModule(ModelSettings("builtin:tiny-llama", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                        load_in_4bit=four_bit), create_algorithm("dpo"))
    module.configure_model()
    for name, parameter in module.policy.named_parameters():
        if "lora_B" in name:  # B starts at 0: move it so the adapters change the log-probs
            torch.nn.init.normal_(parameter, std=0.1)
    batch = laid_out()
    weights = torch.randn(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    results = []
    for packs in (False, True):
        monkeypatch.setattr(packed_attention, "packs_completions", lambda config, packs=packs: packs)
        module.policy.zero_grad()
        logps = module._logps(module.policy, batch).token_logps
        (logps * weights).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])
        with torch.no_grad():
            reference = module._reference_forward(batch, 1.0).token_logps
        results.append((logps.detach(), grads, reference))
    (padded, padded_grads, padded_reference), (packed, packed_grads, packed_reference) = results
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_grads, padded_grads, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed_reference, padded_reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(packed, packed_reference)  # the adapters matter, and the reference had them off
