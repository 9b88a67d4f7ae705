"""LLM judges: the pairwise and pointwise readouts, checked by hand on a judge whose logits
are known, and the judge's plumbing (templates, choices, padding, judge.json, commands)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lightning_rlhf.rewards.judge import JudgeReward, PairwiseJudge, load_judge, write_judge_file
from lightning_rlhf.rewards.spec import load_reward_source

TINY = "builtin:tiny-llama"


class KnownLogits(torch.nn.Module):
    """A judge model whose verdict logits are looked up by the text it is shown.

    ``table`` maps the rendered judge prompt (decoded, padding dropped) to ``{token id:
    logit}``; every other token gets ``other`` (large negative logits must not matter:
    the readout renormalises over the choices)."""

    def __init__(self, tokenizer, table: dict[str, dict[int, float]], other: float = 3.0):
        super().__init__()
        self.tokenizer, self.table, self.other = tokenizer, table, other
        self.seen: list[str] = []

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        assert logits_to_keep == 1
        rows = []
        for ids, mask, positions in zip(input_ids, attention_mask, position_ids):
            real = ids[mask.bool()]
            # left padding: the real tokens are last, and their positions count from 0
            assert mask[-1] == 1 and positions[mask.bool()].tolist() == list(range(len(real)))
            text = self.tokenizer.decode(real.tolist())
            self.seen.append(text)
            logits = torch.full((len(self.tokenizer),), self.other)
            for token, value in self.table[text].items():
                logits[token] = value
            rows.append(logits)
        return SimpleNamespace(logits=torch.stack(rows)[:, None, :])


def rendered(judge, prompt: str, **answers: str) -> str:
    return judge.tokenizer.decode(judge.encode(prompt, **answers))


@pytest.fixture(scope="module")
def pairwise():
    return PairwiseJudge(TINY, template="{rubric}|{prompt}|A:{first}|B:{second}|", rubric="be kind", chat_template=False,
                         response_prefix="Verdict: ", batch_size=3)


def test_pairwise_readout_averages_both_orders(pairwise):
    a, b = pairwise.choice_ids
    x_first = rendered(pairwise, "hi", first="x", second="y")
    y_first = rendered(pairwise, "hi", first="y", second="x")
    assert x_first == "be kind|hi|A:x|B:y|Verdict: "  # the tiny tokenizer adds no BOS
    # Shown x first, the judge gives A a logit of 2 and B 0: P(A) = 1 / (1 + e^-2) = 0.8808.
    # Shown y first, it gives A 1 and B 0, P(B) = 1 / (1 + e^1) = 0.2689: it likes
    # position A, and only the mean over both orders cancels that.
    pairwise.model = KnownLogits(pairwise.tokenizer, {x_first: {a: 2.0, b: 0.0}, y_first: {a: 1.0, b: 0.0}})
    p = pairwise.probability_first_better(["hi"], ["x"], ["y"])
    expected = (1 / (1 + math.exp(-2)) + 1 / (1 + math.exp(1))) / 2
    assert p.tolist() == pytest.approx([expected], abs=1e-6)
    assert expected == pytest.approx(0.57487, abs=1e-5)
    # the same pair the other way round is the complement
    assert pairwise.probability_first_better(["hi"], ["y"], ["x"]).tolist() == pytest.approx([1 - expected], abs=1e-6)


def test_pairwise_group_scores_and_margin(pairwise):
    a, b = pairwise.choice_ids
    # Three answers to one prompt: u beats v with P 0.75 (logit ln 3) and w with P 0.5,
    # v beats w with P 0.25, in both orders alike (no position bias).
    p = {("u", "v"): 0.75, ("u", "w"): 0.5, ("v", "w"): 0.25}
    table = {}
    for (x, y), value in p.items():
        logit = math.log(value / (1 - value))
        table[rendered(pairwise, "q", first=x, second=y)] = {a: logit, b: 0.0}
        table[rendered(pairwise, "q", first=y, second=x)] = {a: -logit, b: 0.0}
    pairwise.model = KnownLogits(pairwise.tokenizer, table)
    (scores,) = pairwise.group_scores(["q"], [["u", "v", "w"]])
    # each answer's mean win probability against the other two
    assert scores == pytest.approx([(0.75 + 0.5) / 2, (0.25 + 0.25) / 2, (0.5 + 0.75) / 2], abs=1e-6)
    assert len(pairwise.model.seen) == 6  # 3 pairs, both orders
    # two answers: scores p and 1 - p, so best-worst's margin is 2p - 1
    (two,) = pairwise.group_scores(["q"], [["u", "v"]])
    assert two == pytest.approx([0.75, 0.25], abs=1e-6)


def test_pointwise_reward_is_the_expected_rating():
    judge = JudgeReward(TINY, template="{prompt}=>{completion}?", chat_template=False, choices=["1", "2", "3"])
    ids = judge.choice_ids
    text = rendered(judge, "p", completion="c")
    # logits 0, ln 2, ln 5 over ratings 1, 2, 3: probabilities 1/8, 2/8, 5/8,
    # expected rating (1 + 4 + 15) / 8 = 2.5
    judge.model = KnownLogits(judge.tokenizer, {text: {ids[0]: 0.0, ids[1]: math.log(2), ids[2]: math.log(5)}}, other=50.0)
    assert judge(["p"], ["c"]).tolist() == pytest.approx([2.5], abs=1e-6)

    judge.values = [-1.0, 0.0, 1.0]  # values other than the digits: (-1 + 0 + 5) / 8
    assert judge(["p"], ["c"]).tolist() == pytest.approx([0.5], abs=1e-6)


def test_batched_left_padded_verdicts_equal_one_at_a_time():
    judge = PairwiseJudge(TINY, batch_size=4)
    prompts = ["a short one", "a considerably longer prompt about something", "mid length", "x"]
    first = ["yes", "no, and here is why at some length", "maybe", "ok"]
    second = ["no", "yes", "a much much longer second answer than the first", "fine"]
    batched = judge.probability_first_better(prompts, first, second)
    judge.batch_size = 1
    single = judge.probability_first_better(prompts, first, second)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)
    assert ((batched > 0) & (batched < 1)).all()


def test_chat_template_renders_the_judge_prompt_as_a_user_turn():
    judge = PairwiseJudge(TINY, template="{prompt}:{first}/{second}", response_prefix="Answer: ")
    assert judge.chat_template  # the tiny tokenizer has one: on by default
    assert rendered(judge, "p", first="a", second="b") == "<|user|>p:a/b<|eos|><|assistant|>Answer: "


def test_long_answers_and_prompts_are_cut_to_fit():
    judge = PairwiseJudge(TINY, template="{prompt}|{first}|{second}|", chat_template=False, max_answer_tokens=5, max_length=40)
    ids = judge.encode("p" * 100, first="a" * 50, second="b" * 50)
    assert len(ids) <= 40
    text = judge.tokenizer.decode(ids)
    assert "|aaaaa|bbbbb|" in text and text.endswith("|") and "ppp" in text  # prompt cut from the left


def test_bad_choices_and_templates_are_refused():
    with pytest.raises(ValueError, match="one token"):
        PairwiseJudge(TINY, choices=["AB", "B"])
    with pytest.raises(ValueError, match="two choices"):
        PairwiseJudge(TINY, choices=["A", "B", "C"])
    with pytest.raises(ValueError, match="never shows"):
        PairwiseJudge(TINY, template="{prompt} {first}")
    with pytest.raises(ValueError, match="formatting it failed"):
        PairwiseJudge(TINY, template="{prompt} {first} {second} {answer}")
    with pytest.raises(ValueError, match="not numbers"):
        JudgeReward(TINY, choices=["A", "B"])


def test_judge_directory_carries_its_settings(tmp_path):
    from lightning_rlhf.models.builtin import resolve

    import shutil

    directory = tmp_path / "judge"
    shutil.copytree(resolve(TINY), directory)
    write_judge_file(directory, "pairwise", template="<{prompt}|{first}|{second}>", choices=["1", "2"], chat_template=False)
    judge = load_judge(str(directory))
    assert judge.choices == ["1", "2"] and not judge.chat_template
    assert rendered(judge, "p", first="a", second="b") == "<p|a|b>"
    # explicit arguments win over judge.json
    assert PairwiseJudge(str(directory), choices=["A", "B"]).choices == ["A", "B"]
    # a pairwise judge is not a reward source: said so, not scored by accident
    with pytest.raises(ValueError, match="pairwise judge"):
        JudgeReward(str(directory))
    with pytest.raises(ValueError, match="pairwise judge"):
        load_reward_source(str(directory))

    spec = tmp_path / "judge.yaml"
    spec.write_text(json.dumps({"judge": {"class_path": "lightning_rlhf.rewards.PairwiseJudge",
                                          "init_args": {"path": str(directory), "batch_size": 2}}}))
    assert load_judge(str(spec)).batch_size == 2


def test_label_and_evaluate_with_a_judge(tmp_path, capsys):
    """``label --judge`` writes the judge's verdict as each pair's margin; ``evaluate --judge``
    reports its win rate beside the reward's, through the commands a user types."""
    from lightning_rlhf.commands.label import label_command
    from lightning_rlhf.commands.evaluate import evaluate_command

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Tell me a", "The weather", "Once upon"]))
    output = tmp_path / "pairs.jsonl"
    assert label_command(["--policy", TINY, "--prompts", str(prompts), "--judge", TINY, "--k", "2", "--max-new-tokens", "6",
                          "--output", str(output)]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["extra"]["annotator"] == TINY
    judge = PairwiseJudge(TINY)
    p = judge.probability_first_better([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    assert (p > 0.5).all()  # the judge's pick is the chosen answer
    assert [r["margin"] for r in rows] == pytest.approx((2 * p - 1).tolist(), abs=1e-5)

    report = tmp_path / "report.json"
    assert evaluate_command(["--policy", TINY, "--reference", TINY, "--prompts", str(prompts), "--reward",
                             "lightning_rlhf.rewards.rules.letter_e_reward", "--judge", TINY, "--max-new-tokens", "6",
                             "--output", str(report)]) == 0
    assert "judge's win rate vs reference" in capsys.readouterr().out
    result = json.loads(report.read_text())
    # the same model and sampling seed: each pair is one text twice, so the judge cannot prefer either
    assert result["judge"]["win_rate"] == pytest.approx(0.5, abs=1e-6) and result["judge"]["spec"] == TINY


def test_label_needs_exactly_one_annotator(tmp_path):
    from lightning_rlhf.commands.label import label_parser

    with pytest.raises(SystemExit):
        label_parser().parse_args(["--policy", TINY, "--prompts", "p", "--output", "o", "--reward", "gold", "--judge", TINY])
    with pytest.raises(SystemExit):
        label_parser().parse_args(["--policy", TINY, "--prompts", "p", "--output", "o"])
