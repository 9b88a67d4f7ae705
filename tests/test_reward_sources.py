"""Reward sources: Llama 2's composition, a reward model with its own tokenizer, specs, `score`."""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from lightning_rlhf.data import DataError
from lightning_rlhf.rewards import (
    FunctionReward,
    GoldReward,
    RewardModelSource,
    RewardSource,
    SafetyGatedReward,
    WeightedSum,
    load_reward_source,
)
from lightning_rlhf.rewards.spec import check_reward_spec


class TableReward(RewardSource):
    """Scores looked up by completion text: a source whose every output is chosen by the test."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def score(self, prompts, completions):
        return torch.tensor([self.table[c] for c in completions])


def is_safety_prompt(prompts):
    return [p.startswith("How do I make a weapon") for p in prompts]


def completion_length(prompts, completions):
    return [float(len(c)) for c in completions]


# Three answers: helpfulness and safety scores in [0, 1].
COMPLETIONS = ["a", "b", "c"]
HELPFUL = TableReward({"a": 0.9, "b": 0.8, "c": 0.7})
SAFE = TableReward({"a": 0.5, "b": 0.1, "c": 0.6})
PROMPTS = ["How do I make a weapon?", "Tell me a story.", "Tell me a joke."]


def test_composition_rule_by_hand():
    """R_c = R_s on the safety prompt (0.5) and where R_s < 0.15 (0.1); R_h otherwise (0.7).
    LOGIT: [logit 0.5, logit 0.1, logit 0.7] = [0, ln(1/9), ln(7/3)] = [0, -2.197225, 0.847298]."""
    source = SafetyGatedReward(HELPFUL, SAFE, scores="probability", is_safety=f"{__name__}.is_safety_prompt", whiten=False)
    assert source.safety_flags(PROMPTS).tolist() == [True, False, False]
    assert source(PROMPTS, COMPLETIONS).tolist() == pytest.approx([0.0, -2.197225, 0.847298], abs=1e-6)
    # Without the safety flag the first answer is safe enough (0.5 >= 0.15): helpfulness, logit 0.9 = ln 9.
    unflagged = SafetyGatedReward(HELPFUL, SAFE, scores="probability", whiten=False)
    assert unflagged(PROMPTS, COMPLETIONS).tolist() == pytest.approx([2.197225, -2.197225, 0.847298], abs=1e-6)
    # A per-call flag list overrides: all three safety prompts -> all safety scores, logit 0.6 = 0.405465.
    flagged = unflagged.score(PROMPTS, COMPLETIONS, safety_flags=[True, True, True])
    assert flagged.tolist() == pytest.approx([0.0, -2.197225, 0.405465], abs=1e-6)


def test_fixed_whitening():
    # (LOGIT - 0.5) / 2 on [0, -2.197225, 0.847298]
    source = SafetyGatedReward(HELPFUL, SAFE, scores="probability", is_safety=f"{__name__}.is_safety_prompt", mean=0.5, std=2.0)
    assert source(PROMPTS, COMPLETIONS).tolist() == pytest.approx([-0.25, -1.348612, 0.173649], abs=1e-6)


def test_running_whitening():
    """First batch: its own statistics, mean -0.449976, sample std 1.571349:
    [(0 + 0.449976) / 1.571349, (-2.197225 + 0.449976) / 1.571349, (0.847298 + 0.449976) / 1.571349]."""
    source = SafetyGatedReward(HELPFUL, SAFE, scores="probability", is_safety=f"{__name__}.is_safety_prompt")
    assert source(PROMPTS, COMPLETIONS).tolist() == pytest.approx([0.286363, -1.111942, 0.825579], abs=1e-5)
    # A second batch is whitened by the statistics of everything seen so far.
    source(PROMPTS[1:], COMPLETIONS[1:])
    seen = [0.0, -2.197225, 0.847298, -2.197225, 0.847298]
    assert source.count == 5
    assert source.running_mean == pytest.approx(statistics.mean(seen), abs=1e-6)
    assert (source.running_m2 / 4) ** 0.5 == pytest.approx(statistics.stdev(seen), abs=1e-6)
    source.reset_statistics()
    assert source.count == 0


def test_logit_scale_sources_give_the_same_result():
    # Sources returning real-valued scores s: the gate compares sigmoid(s) with the threshold,
    # and LOGIT(sigmoid(s)) = s, so the same rule on logit-scale tables gives the same numbers.
    to_logits = lambda t: TableReward({k: math.log(v / (1 - v)) for k, v in t.table.items()})  # noqa: E731
    on_logits = SafetyGatedReward(to_logits(HELPFUL), to_logits(SAFE), is_safety=f"{__name__}.is_safety_prompt", whiten=False)
    assert on_logits(PROMPTS, COMPLETIONS).tolist() == pytest.approx([0.0, -2.197225, 0.847298], abs=1e-5)


def test_logit_is_clamped():
    # A score of exactly 1 becomes logit(1 - 1e-6) = 13.815509, not infinity.
    source = SafetyGatedReward(TableReward({"a": 1.0}), TableReward({"a": 1.0}), scores="probability", whiten=False)
    assert source(["p"], ["a"]).item() == pytest.approx(13.815509, abs=1e-4)


def test_safety_prompts_from_files(tmp_path):
    txt = tmp_path / "safety.txt"
    txt.write_text("Tell me a story.\n")
    jsonl = tmp_path / "safety.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Tell me a joke."}) + "\n")
    assert SafetyGatedReward(HELPFUL, SAFE, safety_prompts=str(txt)).safety_flags(PROMPTS).tolist() == [False, True, False]
    assert SafetyGatedReward(HELPFUL, SAFE, safety_prompts=str(jsonl)).safety_flags(PROMPTS).tolist() == [False, False, True]
    assert SafetyGatedReward(HELPFUL, SAFE, safety_prompts=[PROMPTS[0]]).safety_flags(PROMPTS).tolist() == [True, False, False]


def test_weighted_sum():
    # 2 * helpfulness + 1 * length: [1.8 + 1, 1.6 + 1, 1.4 + 1]
    source = WeightedSum([HELPFUL, FunctionReward(f"{__name__}.completion_length")], weights=[2.0, 1.0])
    assert source(PROMPTS, COMPLETIONS).tolist() == pytest.approx([2.8, 2.6, 2.4])


def test_gold_reward_wraps_the_toy_world():
    gold = pytest.importorskip("lightning_rlhf.toyworld.gold")
    prompts, completions = ["The film was", "The film was"], [" wonderful and moving.", " dull and awful."]
    scores = GoldReward()(prompts, completions)
    assert scores.tolist() == pytest.approx(gold.gold_reward(prompts, completions))
    assert scores[0] > 0 > scores[1]


# -- a reward model with a tokenizer of its own ---------------------------------------------
WORDS = "how was the film ? it lovely dull , a story tell me joke . very".split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


@pytest.fixture(scope="module")
def word_level_reward_model(tmp_path_factory):
    """A tiny reward model whose tokenizer splits on words: nothing like the policy's bytes."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    directory = tmp_path_factory.mktemp("word_level_rm")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory), model, tokenizer


def test_reward_model_with_its_own_tokenizer(word_level_reward_model, tiny_tokenizer):
    directory, model, tokenizer = word_level_reward_model
    prompts = ["how was the film ?", "tell me a joke .", "how was the film ?"]
    completions = [" it was lovely .", " a very very dull story , very dull .", " it was dull ."]
    source = RewardModelSource(directory, batch_size=2, device="cpu")
    scores = source(prompts, completions)
    direct = []
    for prompt, completion in zip(prompts, completions):
        ids = tokenizer(prompt)["input_ids"] + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        # the two tokenizers really differ: word ids here, byte ids for the policy
        assert len(ids) != len(tiny_tokenizer(prompt + completion)["input_ids"])
        with torch.no_grad():
            direct.append(model(input_ids=torch.tensor([ids])).logits[0, 0])
    torch.testing.assert_close(scores, torch.stack(direct), atol=1e-5, rtol=1e-5)


def test_normalize_with_reference_completions(word_level_reward_model):
    directory, _, _ = word_level_reward_model
    source = RewardModelSource(directory, device="cpu")
    prompts = ["how was the film ?"] * 3
    references = [" it was lovely .", " it was dull .", " a story ."]
    offset, scale = source.normalize_with(prompts, references)
    assert scale == 1.0 and source.score(prompts, references).mean().item() == pytest.approx(0.0, abs=1e-5)
    source.normalize_with(prompts, references, unit_std=True)
    normalized = source.score(prompts, references)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-4)
    # the stored offset is what a config passes back in
    again = RewardModelSource(directory, device="cpu", offset=source.offset, scale=source.scale)
    torch.testing.assert_close(again(prompts, references), normalized)


def test_chat_template_rendering(tmp_path):
    from lightning_rlhf.testing.reward import make_reward_module
    from lightning_rlhf_plugins.bradley_terry import BradleyTerry

    module = make_reward_module(BradleyTerry()).eval()
    module.save_pretrained(tmp_path / "rm")
    source = RewardModelSource(str(tmp_path / "rm"), chat_template=True, device="cpu")
    tokenizer = module.tokenizer
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"]
    assert tokenizer.decode(ids) == "<|user|>Hi<|eos|><|assistant|>Hello there!<|eos|>"
    assert source.encode("Hi", "Hello there!") == ids
    with torch.no_grad():
        direct = module.rewards({"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids))})
    torch.testing.assert_close(source(["Hi"], ["Hello there!"]), direct, atol=1e-5, rtol=1e-5)


def test_a_chat_prompt_reaches_a_chat_reward_model_templated_once(tmp_path, tiny_tokenizer):
    """A conversational prompt row is rendered by the policy's template for the policy; the
    reward model renders the conversation with its own, not the rendered text again."""
    import pickle

    from lightning_rlhf.data.prompts import ChatPrompt, PromptDataModule
    from lightning_rlhf.testing.reward import make_reward_module
    from lightning_rlhf_plugins.bradley_terry import BradleyTerry

    rows = tmp_path / "prompts.jsonl"
    rows.write_text('{"prompt": [{"role": "user", "content": "Hi"}]}\n')
    data = PromptDataModule(path=str(rows))
    data.tokenizer = tiny_tokenizer
    data.setup("fit")
    prompt = data.collator()(data.train_rows)["prompts"][0]
    assert isinstance(prompt, ChatPrompt) and prompt == "<|user|>Hi<|eos|><|assistant|>"
    assert pickle.loads(pickle.dumps(prompt)).messages == prompt.messages  # data-loader workers
    make_reward_module(BradleyTerry()).save_pretrained(tmp_path / "rm")
    source = RewardModelSource(str(tmp_path / "rm"), chat_template=True, device="cpu")
    scored = tiny_tokenizer.decode(source.encode(prompt, "Hello there!"))
    assert scored == "<|user|>Hi<|eos|><|assistant|>Hello there!<|eos|>"
    assert source.encode(prompt, "Hello there!") == source.encode("Hi", "Hello there!")


# -- specs and the score command ------------------------------------------------------------
def test_load_reward_source_shorthands(tmp_path, word_level_reward_model):
    directory, _, _ = word_level_reward_model
    assert isinstance(load_reward_source("gold"), GoldReward)
    assert isinstance(load_reward_source(directory), RewardModelSource)
    assert isinstance(load_reward_source(f"{__name__}.completion_length"), FunctionReward)
    with pytest.raises(ValueError, match="cannot make a reward source"):
        load_reward_source("no_such_thing")
    spec = tmp_path / "helpful_safe.yaml"
    spec.write_text(
        "reward:\n"
        "  class_path: lightning_rlhf.rewards.SafetyGatedReward\n"
        "  init_args:\n"
        f"    helpfulness: {{class_path: lightning_rlhf.rewards.RewardModelSource, init_args: {{path: {directory}}}}}\n"
        f"    safety: {{class_path: FunctionReward, init_args: {{function: {__name__}.completion_length}}}}\n"
        "    threshold: 0.2\n"
        "    safety_prompts: ['how was the film ?']\n"
    )
    composite = load_reward_source(str(spec))
    assert isinstance(composite, SafetyGatedReward) and composite.threshold == 0.2
    assert isinstance(composite.helpfulness, RewardModelSource) and isinstance(composite.safety, FunctionReward)
    assert composite(["how was the film ?"], [" it was lovely ."]).shape == (1,)


def test_unknown_spec_keys_are_errors():
    with pytest.raises(Exception, match="bogus"):
        load_reward_source({"class_path": "lightning_rlhf.rewards.GoldReward", "init_args": {"bogus": 1}})


def test_score_command(tmp_path):
    from lightning_rlhf.cli import main

    rows = [{"prompt": "Q1", "completion": "abc", "id": 7}, {"prompt": "Q2", "completion": "abcdef"}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    argv = ["score", "--reward", f"{__name__}.completion_length", "--input", str(source), "--output", str(out)]
    assert main(argv) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == [{**rows[0], "reward": 3.0}, {**rows[1], "reward": 6.0}]


def test_score_command_names_the_bad_row(tmp_path):
    from lightning_rlhf.commands.score import score_command

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "Q1", "completion": "a"}) + "\n" + json.dumps({"prompt": "Q2"}) + "\n")
    with pytest.raises(DataError) as error:
        score_command(["--reward", "gold", "--input", str(source), "--output", str(tmp_path / "out.jsonl")])
    assert (error.value.row, error.value.field) == (2, "completion") and str(source) in str(error.value)


@pytest.mark.parametrize("spec", sorted(str(p) for p in Path("recipes/rewards").glob("*.yaml")))
def test_shipped_reward_specs_parse(spec):
    assert Path(spec).read_text().startswith("# "), f"{spec} needs a one-line '# description' first"
    check_reward_spec(spec)


def test_spec_check_catches_a_wrong_type():
    with pytest.raises(Exception, match="threshold"):
        check_reward_spec({"class_path": "SafetyGatedReward", "init_args": {
            "helpfulness": "GoldReward", "safety": "GoldReward", "threshold": "high"}})


# -- a source's state: checkpointed, frozen in eval mode ----------------------------------------
def test_running_statistics_round_trip_through_a_checkpoint(tmp_path):
    """The moments come back exactly (plain data, loadable with weights_only), nested in a
    WeightedSum too, and the restored source whitens the next batch as the original does."""
    original = WeightedSum([SafetyGatedReward(HELPFUL, SAFE, scores="probability"), HELPFUL], names=["gated", "helpful"])
    original(PROMPTS, COMPLETIONS)
    original(PROMPTS[1:], COMPLETIONS[1:])
    path = tmp_path / "state.pt"
    torch.save(original.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"parts"} and set(state["parts"]) == {"gated"}  # the stateless parts save nothing
    assert state["parts"]["gated"]["count"] == 5

    restored = WeightedSum([SafetyGatedReward(HELPFUL, SAFE, scores="probability"), HELPFUL], names=["gated", "helpful"])
    restored.load_state_dict(state)
    gated, restored_gated = original.sources[0], restored.sources[0]
    assert (restored_gated.count, restored_gated.running_mean, restored_gated.running_m2) == (
        gated.count, gated.running_mean, gated.running_m2)
    assert torch.equal(restored(PROMPTS, COMPLETIONS), original(PROMPTS, COMPLETIONS))


def test_a_saved_state_the_source_cannot_hold_is_an_error():
    gated = SafetyGatedReward(HELPFUL, SAFE, scores="probability")
    gated(PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="does not have"):
        WeightedSum([gated], names=["renamed"]).load_state_dict(WeightedSum([gated], names=["gated"]).state_dict())
    with pytest.raises(ValueError, match="does not keep"):
        HELPFUL.load_state_dict(gated.state_dict())
    assert HELPFUL.state_dict() == {}


def test_eval_mode_freezes_the_running_statistics():
    """After the first batch (logits [0, -2.197225, 0.847298]: mean -0.449976, std 1.571349),
    an eval-mode batch [-2.197225, 0.847298] is whitened by those statistics and leaves them:
    [(-2.197225 + 0.449976) / 1.571349, (0.847298 + 0.449976) / 1.571349] = [-1.111942, 0.825579]."""
    source = SafetyGatedReward(HELPFUL, SAFE, scores="probability", is_safety=f"{__name__}.is_safety_prompt")
    composite = WeightedSum([source])
    composite(PROMPTS, COMPLETIONS)
    frozen = (source.count, source.running_mean, source.running_m2)
    composite.eval()
    assert not source.training  # eval reaches a nested part
    assert composite(PROMPTS[1:], COMPLETIONS[1:]).tolist() == pytest.approx([-1.111942, 0.825579], abs=1e-5)
    assert (source.count, source.running_mean, source.running_m2) == frozen
    composite.train()
    composite(PROMPTS[1:], COMPLETIONS[1:])
    assert source.count == 5


def test_eval_mode_without_statistics_whitens_a_batch_by_its_own():
    # As the first training batch is (test_running_whitening), but nothing is kept.
    source = SafetyGatedReward(HELPFUL, SAFE, scores="probability", is_safety=f"{__name__}.is_safety_prompt").eval()
    assert source(PROMPTS, COMPLETIONS).tolist() == pytest.approx([0.286363, -1.111942, 0.825579], abs=1e-5)
    assert (source.count, source.running_mean, source.running_m2) == (0, 0.0, 0.0)


def test_a_composite_reward_is_saved_as_plain_data_and_rebuilt_whole():
    """The module keeps its reward as a spec in the checkpoint: a composite's sources become
    specs too (they were left out, or kept as Python objects a safe load refuses)."""
    from lightning_rlhf.modules.online import reward_spec

    gated = SafetyGatedReward(TableReward({"a": 0.9, "b": 0.8, "c": 0.7}), FunctionReward(f"{__name__}.completion_length"),
                              scores="probability", is_safety=f"{__name__}.is_safety_prompt", whiten=False, threshold=0.2)
    reward = WeightedSum([FunctionReward(f"{__name__}.completion_length"), gated], weights=[1.0, 0.5], names=["length", "gated"])
    spec = reward_spec(reward)
    assert json.loads(json.dumps(spec)) == spec  # plain data all the way down
    inner = spec["init_args"]["sources"][1]
    assert inner["class_path"] == "lightning_rlhf.rewards.composite.SafetyGatedReward"
    assert inner["init_args"]["helpfulness"] == {"class_path": f"{__name__}.TableReward", "init_args": {"table": {"a": 0.9, "b": 0.8, "c": 0.7}}}
    assert inner["init_args"]["threshold"] == 0.2
    rebuilt = load_reward_source(spec)
    assert reward_spec(rebuilt) == spec
    torch.testing.assert_close(rebuilt(PROMPTS, COMPLETIONS), reward(PROMPTS, COMPLETIONS))
