"""Process reward models: the step loss by hand, where each step is scored, the aggregations,
step-labelled rows with located errors, and a trained PRM exported and used as a reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.cli import main
from lightning_rlhf.data.stepwise import split_steps, step_scoring_positions
from lightning_rlhf.rewards.steps import aggregate_steps
from lightning_rlhf.toyworld.arithmetic import Problem, label_steps, parse_problem

ROOT = Path(__file__).resolve().parents[1]


class GivenStepScores:
    def __init__(self, scores: list[float]):
        self.scores = torch.tensor(scores, requires_grad=True)

    def step_rewards(self, batch):
        return self.scores


@pytest.mark.parametrize(("weight", "expected"), [(1.0, 0.550503), (2.0, 0.691694)])
def test_the_step_loss_by_hand(weight, expected):
    """Logits 2.0 (a right step) and 0.5 (a wrong one): -log sigmoid(2) = 0.126928 and
    -log sigmoid(-0.5) = 0.974077; mean 0.550503; the wrong step weighted 2:
    (0.126928 + 2 * 0.974077) / 3 = 0.691694. Gradient of the mean w.r.t. the wrong step's
    logit: sigmoid(0.5) / 2 = 0.311230."""
    ctx = GivenStepScores([2.0, 0.5])
    out = create_algorithm("prm", wrong_step_weight=weight).loss(ctx, {"step_labels": torch.tensor([1.0, 0.0])})
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["wrong_step_fraction"].item() == 0.5
    if weight == 1.0:
        out.loss.backward()
        assert ctx.scores.grad[1].item() == pytest.approx(0.311230, abs=1e-6)
        assert ctx.scores.grad[0].item() == pytest.approx((torch.sigmoid(torch.tensor(2.0)).item() - 1) / 2, abs=1e-6)


def test_each_step_is_scored_at_its_last_token_separator_included(tiny_tokenizer):
    """The tiny tokenizer has a token per character and adds no BOS: ``Q?`` + ``a1`` + ``\\n``
    + ``b2``: the first step is scored at the separator (character and token 4), the last
    at its own last character (6)."""
    ids, positions = step_scoring_positions(tiny_tokenizer, "Q?", ["a1", "b2"], "\n", max_length=64)
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "Q?a1\nb2"
    assert positions == [4, 6]
    assert tiny_tokenizer.decode([ids[4]]) == "\n" and tiny_tokenizer.decode([ids[6]]) == "2"
    # cut at 6 tokens: the second step's scoring token is gone, so only the first is scored
    assert step_scoring_positions(tiny_tokenizer, "Q?", ["a1", "b2"], "\n", max_length=6)[1] == [4]


def test_split_steps_inverts_the_join():
    assert split_steps(" 4+7=11. 11+2=13. Answer: 13", ".") == [" 4+7=11", " 11+2=13", " Answer: 13"]
    for steps, sep in [(["a", "b", "c"], "\n"), ([" x", " y"], ". ")]:
        assert split_steps(sep.join(steps), sep) == steps
    assert split_steps("a\n\nb\n", "\n") == ["a\n", "b\n"]  # empty pieces stay with the step before
    assert split_steps("one step", "") == ["one step"]


def test_aggregations_by_hand():
    probabilities = [0.9, 0.5, 0.8]
    assert aggregate_steps(probabilities, "min") == 0.5
    assert aggregate_steps(probabilities, "product") == pytest.approx(0.36)
    assert aggregate_steps(probabilities, "last") == 0.8
    assert math.isnan(aggregate_steps([], "min"))
    with pytest.raises(ValueError, match="min, product or last"):
        aggregate_steps(probabilities, "mean")


def test_the_arithmetic_verifier_labels_each_step():
    problem = parse_problem("What is 4+7+2?")
    assert problem == Problem((4, 7, 2))
    assert label_steps(problem, split_steps(" 4+7=11. 11+2=13. Answer: 13", ".")) == [True, True, True]
    # a wrong total; the next step adds correctly to it; the answer states it: only the first is wrong
    assert label_steps(problem, split_steps(" 4+7=12. 12+2=14. Answer: 14", ".")) == [False, True, True]
    # an answer before every term is added; a step that adds the wrong term; text that is no step
    assert label_steps(problem, split_steps(" 4+7=11. Answer: 11", ".")) == [True, False]
    assert label_steps(problem, split_steps(" 4+2=6. six", ".")) == [False, False]


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"prompt": "Q", "completions": ["a"], "labels": [True, False]}, "labels", "one label per step: 1 steps, 2 labels"),
        ({"prompt": "Q", "completions": ["a", "b"], "labels": [True, "yes"]}, "labels[1]", "expected true/false"),
        ({"prompt": "Q", "completions": [], "labels": []}, "completions", "at least one step"),
        ({"prompt": "Q", "completions": ["a", " "], "labels": [True, True]}, "completions[1]", "empty step"),
        ({"prompt": "Q", "completions": "a", "labels": [True]}, "completions", "expected a list of step strings"),
        ({"prompt": "Q", "completions": ["a"]}, "labels", "missing"),
    ],
)
def test_bad_step_rows_are_located_through_the_command(tmp_path, capsys, row, field, problem):
    good = (ROOT / "recipes" / "data" / "tiny_steps.jsonl").read_text().splitlines()[:3]
    path = tmp_path / "steps.jsonl"
    path.write_text("\n".join([*good, json.dumps(row)]) + "\n")
    code = main(["fit", "--config", "recipes/prm/tiny.yaml", "--trainer.logger", "false", "--trainer.max_steps", "1",
                 "--trainer.enable_progress_bar", "false", "--model.init_args.export_dir", "null",
                 "--data.init_args.path", str(path)])
    err = capsys.readouterr().err
    assert code != 0
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert line.startswith(f"error: {path}, row 4, field '{field}': ") and problem in line, line


def test_a_prm_trains_exports_and_scores_steps(tmp_path):
    """The tiny recipe through the command: the export is a token classifier transformers
    loads, ``load_reward_source`` makes a step source of its directory, and the source's
    score is the aggregate of its step scores."""
    from transformers import AutoModelForTokenClassification

    from lightning_rlhf.rewards import StepRewardSource, load_reward_source

    export = tmp_path / "export"
    code = main(["fit", "--config", "recipes/prm/tiny.yaml", "--trainer.logger", "false", "--trainer.max_epochs", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
                 "--model.init_args.export_dir", str(export)])
    assert code in (0, None)
    assert AutoModelForTokenClassification.from_pretrained(export).config.num_labels == 1
    assert isinstance(load_reward_source(str(export)), StepRewardSource)
    source = StepRewardSource(str(export), step_separator=".", aggregation="product")
    prompts = ["What is 4+7+2?", "What is 5+1+3?"]
    completions = [" 4+7=11. 11+2=13. Answer: 13", " 5+1=6. Answer: 6"]
    steps = source.step_scores(prompts, completions)
    assert [len(s) for s in steps] == [3, 2] and all(0 < p < 1 for s in steps for p in s)
    assert source(prompts, completions).tolist() == pytest.approx([math.prod(s) for s in steps], rel=1e-6)
    # scored one at a time or together: the same (padding changes nothing)
    assert source.step_scores(prompts[1:], completions[1:])[0] == pytest.approx(steps[1], abs=1e-5)
    with pytest.raises(ValueError, match="max_token_log_ratio"):  # a head has no log-ratio to cap
        StepRewardSource(str(export), max_token_log_ratio=0.0)


# -- RL with step rewards -------------------------------------------------------------------


def test_process_advantages_by_hand():
    """A group of two: row 0's steps score 1 and 0 and end at columns 1 and 3, row 1's one
    step scores 1 and ends at column 2. Mean 2/3: normalised 1/3, -2/3 and 1/3; a token's
    advantage sums the steps ending at or after it. With the std (sqrt(1/3)) the same over
    0.57735 + 1e-4."""
    from lightning_rlhf_plugins.grpo import process_advantages

    plain = process_advantages([[1.0, 0.0], [1.0]], [[1, 3], [2]], 2, 5, divide_by_std=False)
    third = 1 / 3
    expected = torch.tensor([[-third, -third, -2 * third, -2 * third, 0.0], [third, third, third, 0.0, 0.0]])
    torch.testing.assert_close(plain, expected)
    scaled = process_advantages([[1.0, 0.0], [1.0]], [[1, 3], [2]], 2, 5, divide_by_std=True)
    torch.testing.assert_close(scaled, expected / (math.sqrt(1 / 3) + 1e-4))
    # a group whose steps all score the same teaches nothing
    assert not process_advantages([[0.5], [0.5, 0.5]], [[0], [0, 1]], 2, 3, divide_by_std=True).any()


def test_each_step_reward_lands_on_the_token_that_ends_the_step(tiny_tokenizer):
    """Prompt ``Q?`` (2 tokens), completion ``a1\\nb2`` + EOS, one token per character: the
    first step ends with the separator (completion token 2, column 2 + 2 - 1 = 3), the
    second with ``2`` (token 4, column 5); EOS gets no step."""
    from lightning_rlhf.data.collate import pad_sequences
    from lightning_rlhf.rollout import Rollout, step_columns

    prompt = tiny_tokenizer("Q?")["input_ids"]
    completion = tiny_tokenizer("a1\nb2")["input_ids"] + [tiny_tokenizer.eos_token_id]
    batch = pad_sequences([(prompt, completion)], tiny_tokenizer.pad_token_id)
    rollout = Rollout(batch, ["a1\nb2"], torch.tensor([True]), torch.tensor([len(completion)]))
    assert step_columns(tiny_tokenizer, rollout, [2], "\n") == [[3, 5]]
    assert batch["input_ids"][0, 3 + 1].item() == tiny_tokenizer("\n")["input_ids"][0]  # column c scores token c + 1
    assert step_columns(tiny_tokenizer, rollout, [1], "\n") == [[3]]  # a PRM that scored only the first step


class LetterSteps:
    """A step source for the tiny model: a step (words split on spaces) scores its letters "e"."""

    step_separator, aggregation = " ", "min"

    def step_scores(self, prompts, completions):
        from lightning_rlhf.data.stepwise import split_steps

        return [[float(step.count("e")) for step in split_steps(c, " ")] if c.strip() else [] for c in completions]


def test_grpo_with_process_rewards_gives_tokens_their_steps_advantages(tiny_tokenizer):
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    algorithm = create_algorithm("grpo", num_generations=4, process_rewards=True, max_new_tokens=8)
    module = make_policy_module(algorithm)
    module.reward_source = LetterSteps()
    experience = algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    advantages, mask = experience.tensors["advantages"], experience.tensors["completion_mask"][:, 1:]
    assert advantages.shape == mask.shape and advantages.dtype == torch.float32
    assert not advantages[~mask.bool()].any()  # prompt and padding: nothing
    assert advantages.abs().sum() > 0
    out = algorithm.loss(module, next(iter(algorithm.minibatches(experience))))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="process_rewards"):
        create_algorithm("grpo", loss_type="gspo", process_rewards=True)
    with pytest.raises(ValueError, match="refill_rounds: 0"):
        create_algorithm("grpo", loss_type="dapo", refill_rounds=2, process_rewards=True)
    plain = make_policy_module(create_algorithm("grpo", process_rewards=True))
    plain.reward_source = __import__("lightning_rlhf.rewards", fromlist=["FunctionReward"]).FunctionReward(
        "lightning_rlhf.rewards.rules.letter_e_reward")
    with pytest.raises(RuntimeError, match="must score each step"):
        plain.algorithm.rollout(plain, make_batch("prompt", plain.tokenizer))


def test_the_step_verifier_scores_steps_and_completions():
    from lightning_rlhf.toyworld.step_verifier import ArithmeticStepVerifier

    prompts = ["What is 4+7+2?"] * 3
    completions = [" 4+7=11. 11+2=13. Answer: 13", " 4+7=12. 12+2=14. Answer: 14", ""]
    verifier = ArithmeticStepVerifier()
    assert verifier.step_scores(prompts, completions) == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], []]
    assert verifier(prompts, completions).tolist() == [1.0, 0.0, 0.0]
    assert ArithmeticStepVerifier("last")(prompts, completions).tolist() == [1.0, 1.0, 0.0]


def test_ppo_with_step_rewards_places_each_step_score_at_its_token(tiny_tokenizer):
    """No KL (kl_coef 0), gamma = lambda = 1: the return at a completion's first scored
    column is the sum of its step scores, minus the missing-EOS penalty when it has no EOS;
    and the return right after a step's last column drops by that step's score."""
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    algorithm = create_algorithm("ppo", kl_coef=0.0, gamma=1.0, lam=1.0, step_rewards=True, missing_eos_penalty=0.5,
                                 max_new_tokens=8, whiten_advantages=False)
    module = make_policy_module(algorithm)
    module.reward_source = LetterSteps()
    prompts = make_batch("prompt", module.tokenizer)
    experience = algorithm.rollout(module, prompts)
    returns, mask = experience.tensors["returns"], experience.tensors["completion_mask"][:, 1:].bool()
    steps = LetterSteps().step_scores(list(prompts["prompts"]), experience.completions)
    for i, row_steps in enumerate(steps):
        first = int(mask[i].nonzero()[0])
        # the experience's score is the aggregate (min) less the penalty, when there is one
        penalty = (min(row_steps) if row_steps else 0.0) - experience.scores[i].item()
        assert penalty == pytest.approx(0.0, abs=1e-6) or penalty == pytest.approx(0.5, abs=1e-6)
        assert returns[i, first].item() == pytest.approx(sum(row_steps) - penalty, abs=1e-5), (i, experience.completions[i])
    with pytest.raises(ValueError, match="step_rewards"):
        create_algorithm("ppo", step_rewards=True, normalize_scores=True)


def test_the_prm_table_and_figure_from_per_seed_results(tmp_path):
    """benchmarks/prm_tables.py's summary of three seeds: each figure's mean and interval, a
    row per selector with the verifier last, and the best-of-n figure drawn from them."""
    import sys

    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import prm_tables

    per_seed = []
    for seed in range(3):
        result = {"prm_step_accuracy": 0.8 + 0.01 * seed, "prm_wrong_step_f1": 0.5, "wrong_step_share": 0.2,
                  "orm_outcome_accuracy": 0.6, "seconds": 1.0}
        for n in (1, 2, 4):
            result[f"best_of_{n}/ORM"] = 0.5
            result[f"best_of_{n}/verifier (any right: the ceiling)"] = 1 - 0.5**n
        per_seed.append(result)
    summary, table = prm_tables.summarise(per_seed, [1, 2, 4])
    assert summary["prm_step_accuracy"]["mean"] == pytest.approx(0.81)
    assert summary["prm_step_accuracy"]["half_width"] == pytest.approx(4.303 * 0.01 / math.sqrt(3), rel=1e-3)
    rows = table.splitlines()
    assert rows[2].startswith("| ORM | 50.0% ± 0.0%") and rows[3].startswith("| verifier") and "93.8%" in rows[3]
    path = tmp_path / "bon.png"
    prm_tables.figure(summary, [1, 2, 4], str(path), "note")
    with Image.open(path) as image:
        assert image.format == "PNG"


# -- implicit PRMs: a step scored by the LM's log-likelihood ratio ------------------------------


def test_each_step_spans_its_tokens_from_its_first_to_its_scoring_token(tiny_tokenizer):
    """One token per character, no BOS: ``Q?`` (tokens 0-1) + ``a1`` + ``\\n`` + ``b2``: the
    first step covers tokens 2-4 (``a1`` and the separator), the second 5-6."""
    from lightning_rlhf.data.stepwise import step_token_spans

    ids, starts, ends = step_token_spans(tiny_tokenizer, "Q?", ["a1", "b2"], "\n", max_length=64)
    assert (starts, ends) == ([2, 5], [4, 6])
    assert step_scoring_positions(tiny_tokenizer, "Q?", ["a1", "b2"], "\n", max_length=64) == (ids, ends)
    assert step_token_spans(tiny_tokenizer, "Q?", ["a1", "b2"], "\n", max_length=6)[1:] == ([2], [4])


def _tiny_scorer(beta=1.0, bias=0.0, max_token_log_ratio=None):
    from transformers import AutoModelForCausalLM

    from lightning_rlhf.models import builtin
    from lightning_rlhf.models.implicit_prm import ImplicitStepScorer

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(builtin.resolve("builtin:tiny-llama"))
    scorer = ImplicitStepScorer(policy, beta=beta, bias=bias, max_token_log_ratio=max_token_log_ratio)
    with torch.no_grad():  # move pi_theta away from pi_ref, so that the ratio is not 0
        for parameter in scorer.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return scorer


@pytest.mark.parametrize("cap", [None, 0.0])
def test_the_implicit_step_score_against_the_textbook_sum(tiny_tokenizer, one_thread, cap):
    """z_s = beta * sum over the step's tokens t (from its first to its scoring token) of
    log pi_theta(x_t | x_<t) - log pi_ref(x_t | x_<t), plus the bias; computed here from full
    logits, for two right-padded rows of different lengths. With ``max_token_log_ratio`` 0
    each token's term is min(0, term), so no step scores above the bias."""
    from lightning_rlhf.data.collate import pad_sequences
    from lightning_rlhf.data.stepwise import step_token_spans

    scorer = _tiny_scorer(beta=0.5, bias=0.25, max_token_log_ratio=cap)
    spans = [step_token_spans(tiny_tokenizer, "Q?", ["a1", "b2"], "\n", 64),
             step_token_spans(tiny_tokenizer, "What?", ["c"], "\n", 64)]
    batch = pad_sequences([([], ids) for ids, _, _ in spans], tiny_tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    starts = torch.tensor([row * width + p for row, (_, s, _) in enumerate(spans) for p in s])
    ends = torch.tensor([row * width + p for row, (_, _, e) in enumerate(spans) for p in e])
    scores = scorer(batch["input_ids"], batch["attention_mask"], starts, ends)

    def token_logps(model, ids):
        logps = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        return [0.0] + [logps[t - 1, ids[t]].item() for t in range(1, len(ids))]

    expected = []
    for ids, first, last in spans:
        policy, reference = token_logps(scorer.policy, ids), token_logps(scorer.reference, ids)
        terms = [policy[t] - reference[t] if cap is None else min(cap, policy[t] - reference[t]) for t in range(len(ids))]
        expected += [0.5 * sum(terms[a : b + 1]) + 0.25 for a, b in zip(first, last)]
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=0)
    assert len(set(expected)) == 3 and all(abs(z - 0.25) > 1e-4 for z in expected)  # the ratio is not 0
    if cap is not None:
        assert all(z < 0.25 for z in expected)


def test_the_implicit_score_trains_the_lm_not_the_reference(tiny_tokenizer, one_thread):
    """At the start pi_theta = pi_ref, so every step scores the bias; the loss's gradient
    reaches pi_theta and the bias, never pi_ref."""
    from transformers import AutoModelForCausalLM

    from lightning_rlhf.data.collate import pad_sequences
    from lightning_rlhf.data.stepwise import step_token_spans
    from lightning_rlhf.models import builtin
    from lightning_rlhf.models.implicit_prm import ImplicitStepScorer

    scorer = ImplicitStepScorer(AutoModelForCausalLM.from_pretrained(builtin.resolve("builtin:tiny-llama")), bias=0.7)
    ids, starts, ends = step_token_spans(tiny_tokenizer, "Q?", ["a1", "b2"], "\n", 64)
    batch = pad_sequences([([], ids)], tiny_tokenizer.pad_token_id)
    scores = scorer(batch["input_ids"], batch["attention_mask"], torch.tensor(starts), torch.tensor(ends))
    torch.testing.assert_close(scores, torch.tensor([0.7, 0.7]))
    torch.nn.functional.binary_cross_entropy_with_logits(scores, torch.tensor([1.0, 0.0])).backward()
    assert scorer.bias.grad is not None and scorer.bias.grad.item() == pytest.approx(torch.sigmoid(torch.tensor(0.7)).item() - 0.5)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.policy.parameters())
    assert all(p.grad is None for p in scorer.reference.parameters())
    with pytest.raises(ValueError, match="beta must be positive"):
        ImplicitStepScorer(scorer.policy, beta=0.0)


def test_the_implicit_prm_bias_starts_at_the_weighted_log_odds():
    """Steps T, T, T, F (w = 1): the constant that minimises the loss has sigmoid = 3/4, log-odds
    log 3 = 1.098612; with the wrong step weighted 3: log(3 / 3) = 0. No labels: 0."""
    from types import SimpleNamespace

    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.implicit_prm_module import ImplicitPRMModule

    rows = [{"step_labels": [True, True]}, {"step_labels": [True, False]}]
    for weight, expected in [(1.0, math.log(3)), (3.0, 0.0)]:
        module = ImplicitPRMModule(ModelSettings(name_or_path="builtin:tiny-llama"), create_algorithm("prm", wrong_step_weight=weight))
        module._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_rows=rows))
        assert module._prior_log_odds() == pytest.approx(expected)
        module._trainer = None
        assert module._prior_log_odds() == 0.0
    with pytest.raises(ValueError, match="scores steps"):
        ImplicitPRMModule(ModelSettings(name_or_path="builtin:tiny-llama"), create_algorithm("bradley_terry"))
    # a checkpoint's hyperparameters give back the same module, beta included
    module = ImplicitPRMModule(ModelSettings(name_or_path="builtin:tiny-llama"), create_algorithm("prm", wrong_step_weight=2.0),
                               beta=0.5)
    rebuilt = ImplicitPRMModule.from_hparams(dict(module.hparams))
    assert rebuilt.beta == 0.5 and rebuilt.algorithm.wrong_step_weight == 2.0 and rebuilt.hparams == module.hparams


def test_an_implicit_prm_trains_exports_and_scores_steps(tmp_path):
    """The tiny implicit recipe through the command: the export holds two causal LMs
    transformers loads and the scale and bias; ``load_reward_source`` makes a step source
    of it, whose steps score as the module's scorer scores them."""
    import json as json_module

    from transformers import AutoModelForCausalLM

    from lightning_rlhf.models.implicit_prm import ImplicitStepScorer
    from lightning_rlhf.rewards import StepRewardSource, load_reward_source

    export = tmp_path / "export"
    code = main(["fit", "--config", "recipes/prm/tiny-implicit.yaml", "--trainer.logger", "false", "--trainer.max_epochs", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
                 "--model.init_args.export_dir", str(export)])
    assert code in (0, None)
    for directory in (export, export / "reference"):
        assert AutoModelForCausalLM.from_pretrained(directory).config.architectures == ["LlamaForCausalLM"]
    config = json_module.loads((export / "implicit_prm.json").read_text())
    assert config["beta"] == 1.0 and config["bias"] != 0.0 and config["max_token_log_ratio"] is None
    assert isinstance(load_reward_source(str(export)), StepRewardSource)
    source = StepRewardSource(str(export), step_separator=".", aggregation="min")
    assert isinstance(source.model, ImplicitStepScorer)
    prompts = ["What is 4+7+2?", "What is 5+1+3?"]
    completions = [" 4+7=11. 11+2=13. Answer: 13", " 5+1=6. Answer: 6"]
    steps = source.step_scores(prompts, completions)
    assert [len(s) for s in steps] == [3, 2] and all(0 < p < 1 for s in steps for p in s)
    assert len({round(p, 6) for s in steps for p in s}) > 1  # trained: the steps' scores differ
    assert source(prompts, completions).tolist() == pytest.approx([min(s) for s in steps], rel=1e-6)
    assert source.step_scores(prompts[1:], completions[1:])[0] == pytest.approx(steps[1], abs=1e-5)
    # the cap, written into the export after training, is read back and only lowers scores
    (export / "implicit_prm.json").write_text(json_module.dumps(config | {"max_token_log_ratio": 0.0}))
    capped = StepRewardSource(str(export), step_separator=".")
    assert capped.model.max_token_log_ratio == 0.0
    bias_probability = 1 / (1 + math.exp(-config["bias"]))
    for row, capped_row in zip(steps, capped.step_scores(prompts, completions)):
        assert all(c <= min(p, bias_probability) + 1e-6 for p, c in zip(row, capped_row))
    # a recipe sets the cap on the source, over the export's: .inf lifts it, 0 puts it back
    lifted = StepRewardSource(str(export), step_separator=".", max_token_log_ratio=math.inf)
    assert lifted.model.max_token_log_ratio is None
    for row, lifted_row in zip(steps, lifted.step_scores(prompts, completions)):
        assert lifted_row == pytest.approx(row, abs=1e-5)
    (export / "implicit_prm.json").write_text(json_module.dumps(config))  # no cap in the export
    spec = {"class_path": "lightning_rlhf.rewards.StepRewardSource",
            "init_args": {"path": str(export), "step_separator": ".", "max_token_log_ratio": 0.0}}
    recapped = load_reward_source(spec)
    assert recapped.model.max_token_log_ratio == 0.0
    for row, capped_row in zip(recapped.step_scores(prompts, completions), capped.step_scores(prompts, completions)):
        assert row == pytest.approx(capped_row, abs=1e-6)
    from lightning_rlhf.modules.online import reward_spec

    assert reward_spec(recapped)["init_args"]["max_token_log_ratio"] == 0.0  # checkpoints keep it


def _lora_implicit_module(load_in_4bit=False):
    from lightning_rlhf.models.config import LoraSettings, ModelSettings
    from lightning_rlhf.modules.implicit_prm_module import ImplicitPRMModule

    torch.manual_seed(0)
    settings = ModelSettings(name_or_path="builtin:tiny-llama", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                             load_in_4bit=load_in_4bit, bnb_4bit_compute_dtype="float32")
    module = ImplicitPRMModule(settings, create_algorithm("prm"), beta=0.5)
    module.configure_model()
    return module


def _step_batch(tokenizer):
    from lightning_rlhf.data.collate import pad_sequences
    from lightning_rlhf.data.stepwise import step_token_spans

    spans = [step_token_spans(tokenizer, "Q?", ["a1", "b2"], "\n", 64), step_token_spans(tokenizer, "What?", ["c"], "\n", 64)]
    batch = pad_sequences([([], ids) for ids, _, _ in spans], tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    starts = torch.tensor([row * width + p for row, (_, s, _) in enumerate(spans) for p in s])
    ends = torch.tensor([row * width + p for row, (_, _, e) in enumerate(spans) for p in e])
    return batch, starts, ends


def test_a_lora_implicit_prm_holds_the_base_once_and_scores_against_it(tiny_tokenizer, one_thread):
    """With LoRA the reference is the policy with its adapters off: no second model. At the
    start (LoRA's B = 0) every step scores the bias; once the adapters move, a step's score
    is beta times its log-ratio to the untouched base (computed here from a fresh copy of
    the base) plus the bias, and the loss's gradient reaches only the adapters and the bias."""
    from transformers import AutoModelForCausalLM

    from lightning_rlhf.models import builtin

    module = _lora_implicit_module()
    scorer = module.reward_model
    assert scorer.reference is None
    batch, starts, ends = _step_batch(tiny_tokenizer)
    at_start = scorer(batch["input_ids"], batch["attention_mask"], starts, ends)
    torch.testing.assert_close(at_start, scorer.bias.detach().expand(3), atol=1e-6, rtol=0)
    with torch.no_grad():
        for name, parameter in scorer.policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    scores = scorer(batch["input_ids"], batch["attention_mask"], starts, ends)
    base = AutoModelForCausalLM.from_pretrained(builtin.resolve("builtin:tiny-llama")).eval()

    def token_logps(model):
        logps = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
        picked = logps[:, :-1].gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return torch.cat([torch.zeros(picked.shape[0], 1), picked], dim=1).reshape(-1)

    with torch.no_grad():
        ratio = token_logps(scorer.policy) - token_logps(base)
    expected = torch.stack([0.5 * ratio[a : b + 1].sum() for a, b in zip(starts.tolist(), ends.tolist())]) + scorer.bias.detach()
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert (scores - scorer.bias).abs().min() > 1e-4  # the adapters moved the ratio off 0
    torch.nn.functional.binary_cross_entropy_with_logits(scores, torch.tensor([1.0, 0.0, 1.0])).backward()
    trained = {name for name, p in scorer.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "bias" in trained and trained - {"bias"} and all("lora_" in name for name in trained - {"bias"})


@pytest.mark.parametrize("load_in_4bit", [False, True])
def test_a_lora_implicit_prm_exports_merged_or_as_an_adapter_and_scores_the_same(tmp_path, tiny_tokenizer, one_thread,
                                                                                 load_in_4bit):
    """Merged: two causal LMs (pi_theta with the adapters folded in, the base as pi_ref);
    unmerged, and always over a 4-bit base: the adapter alone over its base, which is
    pi_ref (loaded in 4 bits again when trained so). A step source scores from either as
    the module's scorer did."""
    import json as json_module

    from lightning_rlhf.rewards import StepRewardSource

    module = _lora_implicit_module(load_in_4bit)
    with torch.no_grad():
        for name, parameter in module.reward_model.policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
        module.reward_model.bias.fill_(0.3)
    module.reward_model.eval()
    prompts, completions = ["What is 4+7+2?", "What is 5+1+3?"], [" 4+7=11. 11+2=13. Answer: 13", " 5+1=6. Answer: 6"]
    exports = {}
    for merged in (True, False):
        directory = module.save_pretrained(tmp_path / f"merged-{merged}", merged=merged)
        config = json_module.loads((directory / "implicit_prm.json").read_text())
        as_adapter = (directory / "adapter_config.json").is_file()
        assert as_adapter == (load_in_4bit or not merged)
        assert (directory / "reference").is_dir() == (not as_adapter)
        assert ("quantization_config" in config) == (load_in_4bit and as_adapter)
        exports[merged] = StepRewardSource(str(directory), step_separator=".", dtype="float32")
        assert (exports[merged].model.reference is None) == as_adapter
        quantised = any(type(m).__name__ == "Linear4bit" for m in exports[merged].model.policy.modules())
        assert quantised == (load_in_4bit and as_adapter)
    in_memory = StepRewardSource.__new__(StepRewardSource)
    in_memory.__dict__.update(exports[False].__dict__, model=module.reward_model)
    expected = in_memory.step_scores(prompts, completions)
    assert len({round(p, 5) for row in expected for p in row}) > 1
    for source in exports.values():
        for row, expected_row in zip(source.step_scores(prompts, completions), expected):
            assert row == pytest.approx(expected_row, abs=2e-4 if load_in_4bit else 1e-5)


def test_the_prm_table_joins_seeds_run_apart(tmp_path, monkeypatch):
    """``--merge``: two prm.json files of one seed each make the table of both seeds, as
    one run of both would (mean of 0.80 and 0.90 is 0.85)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import prm_tables

    paths = []
    for seed, accuracy in [(0, 0.8), (1, 0.9)]:
        result = {"prm_step_accuracy": accuracy, "prm_wrong_step_f1": 0.5, "wrong_step_share": 0.2,
                  "orm_outcome_accuracy": 0.6, "best_of_1/ORM": 0.5, "seconds": 1.0}
        path = tmp_path / f"p{seed}.json"
        path.write_text(json.dumps({"cpu_capability": "AVX2", "seeds": [seed], "per_seed": [result], "command": ["x"],
                                    "args": {"ns": [1], "heldout_prompts": 10}}))
        paths.append(str(path))
    monkeypatch.setattr(sys, "argv", ["prm_tables.py", "--merge", *paths, "--out", str(tmp_path / "joined")])
    prm_tables.main()
    joined = json.loads((tmp_path / "joined" / "prm.json").read_text())
    assert joined["seeds"] == [0, 1] and joined["cpu_capability"] == "AVX2" and len(joined["runs"]) == 2
    assert joined["summaries"]["prm_step_accuracy"]["mean"] == pytest.approx(0.85)
