"""LLM judges: a causal LM prompted with a rubric, read from its next-token distribution.

Nothing is generated. The judge's prompt (a template filled with the rubric, the user's
prompt and the answer or answers) ends where its verdict would begin, and the verdict is
read from the probabilities of a few *choice tokens* at that position, renormalised over
those tokens alone:

- :class:`PairwiseJudge` (RLAIF, Lee et al. 2023): choices ``A`` and ``B``. The
  probability that answer x is better than y is the mean over both orders of the two
  answers, ``(P(A | x first, y second) + P(B | y first, x second)) / 2``, which cancels
  the judge's preference for a position. ``label --judge`` writes it as the pair's
  margin (``2p - 1``); ``evaluate --judge`` reports it as a win rate.
- :class:`JudgeReward` (pointwise, a reward source): choices ``1`` to ``5``; the score is
  the expected value ``sum_i v_i P(c_i)`` over the choices (as G-Eval reads a rating),
  which moves smoothly where the most likely rating would jump.

A judge directory may hold a ``judge.json`` with its template, choices and the like (the
toy world's judge has one), so ``--judge DIR`` needs nothing else; arguments given
explicitly win over it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_rlhf.rewards.base import RewardSource

log = logging.getLogger(__name__)

JUDGE_FILE = "judge.json"
PAIRWISE_TEMPLATE = (
    "{rubric}\n\nThe user wrote:\n{prompt}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
    "Which answer is better? Reply with the single letter A or B."
)
POINTWISE_TEMPLATE = (
    "{rubric}\n\nThe user wrote:\n{prompt}\n\nThe answer:\n{completion}\n\n"
    "Rate the answer from 1 (worst) to 5 (best). Reply with the number alone."
)
RUBRIC = "You are judging answers to a user's message: the better answer is helpful, honest and harmless."


class Judge:
    """The part every judge shares: a frozen causal LM, its tokenizer and chat template,
    and the next-token probabilities of the choice tokens after each rendered prompt."""

    kind = ""  # what judge.json's "kind" must say for this class

    def __init__(
        self,
        path: str,
        template: str | None = None,
        rubric: str | None = None,
        choices: list[str] | None = None,
        chat_template: bool | None = None,
        response_prefix: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        max_answer_tokens: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ):
        """
        Args:
            path: a causal LM: hub id, directory or ``builtin:<name>``; a directory's
                ``judge.json`` supplies any setting below left unset (None)
            template: the judge's prompt, a ``str.format`` string with ``{rubric}``,
                ``{prompt}`` and the answer fields of the judge's kind
            rubric: the standard the answers are held to (a constitution, a task description)
            choices: the verdict tokens, each one token of the judge's tokenizer
            chat_template: render the filled template as a user turn with the judge's chat
                template (default: on when the tokenizer has one)
            response_prefix: text after the prompt (after the assistant turn's start with
                a chat template) that the verdict continues, e.g. ``"Answer: "``
            batch_size: judge prompts per forward pass
            max_length: longest judge prompt in tokens (default 2048); the user's prompt
                is cut from the left to fit
            max_answer_tokens: each answer is cut to this many of the judge's tokens (default 512)
            device: ``auto`` (CUDA if there is one), ``cpu``, ``cuda``, ...
            dtype: weights' dtype: auto (as stored), float32, bfloat16 or float16
        """
        from lightning_rlhf.models.config import ModelSettings
        from lightning_rlhf.models.loading import load_causal_lm, load_tokenizer

        stored = read_judge_file(path)
        if stored.get("kind", self.kind) != self.kind:
            raise ValueError(f"{path} holds a {stored['kind']} judge, not a {self.kind} one")
        self.path = path
        self.template = template if template is not None else stored.get("template", self.default_template)
        self.rubric = rubric if rubric is not None else stored.get("rubric", RUBRIC)
        self.choices = list(choices if choices is not None else stored.get("choices", self.default_choices))
        self.response_prefix = response_prefix if response_prefix is not None else stored.get("response_prefix", "")
        max_length = max_length if max_length is not None else stored.get("max_length", 2048)
        max_answer_tokens = max_answer_tokens if max_answer_tokens is not None else stored.get("max_answer_tokens", 512)
        if batch_size <= 0 or max_length <= 0 or max_answer_tokens <= 0:
            raise ValueError("batch_size, max_length and max_answer_tokens must be positive")
        self.batch_size, self.max_length, self.max_answer_tokens = batch_size, max_length, max_answer_tokens
        self.device, self.dtype = device, dtype
        settings = ModelSettings(name_or_path=path, dtype=dtype)
        self.tokenizer = load_tokenizer(settings)
        self.model = load_causal_lm(settings, trainable=False)
        self._device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                    "cpu" if device == "auto" else device)
        self.model.to(self._device)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_template is None:
            chat_template = stored.get("chat_template", has_template)
        self.chat_template = bool(chat_template)
        if self.chat_template and not has_template:
            raise ValueError(f"chat_template is on, but the judge's tokenizer ({path}) has no chat template")
        self._check_template()
        self._check_choices()
        self.choice_ids = [self._single_token(choice) for choice in self.choices]

    default_template = ""
    default_choices: tuple[str, ...] = ()
    answer_fields: tuple[str, ...] = ()

    def _check_choices(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"a judge needs at least two choices, got {self.choices}")

    def _check_template(self) -> None:
        fields = {"rubric": "", "prompt": "", **{name: "" for name in self.answer_fields}}
        try:
            self.template.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"judge template: it may use {{rubric}}, {{prompt}} and {', '.join('{' + f + '}' for f in self.answer_fields)}; "
                             f"formatting it failed: {e!r}") from None
        missing = [name for name in self.answer_fields if "{" + name + "}" not in self.template]
        if missing:
            raise ValueError(f"judge template never shows the answer field(s) {missing}")

    def _single_token(self, choice: str) -> int:
        ids = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"judge choice {choice!r} is {len(ids)} tokens of {self.path}'s tokenizer ({ids}); a choice "
                             "must be one token (pick another spelling, e.g. with or without a leading space)")
        return ids[0]

    def _cut(self, text: str, limit: int, keep_end: bool = False) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text
        return self.tokenizer.decode(ids[-limit:] if keep_end else ids[:limit])

    def encode(self, prompt: str, **answers: str) -> list[int]:
        """The judge's token ids for one verdict, ending where the verdict token goes."""
        answers = {name: self._cut(text, self.max_answer_tokens) for name, text in answers.items()}
        prompt_text = getattr(prompt, "messages", None)
        prompt_text = prompt if prompt_text is None else "\n".join(f"{m['role']}: {m['content']}" for m in prompt_text)
        for _ in range(2):  # a prompt too long for max_length is cut from the left, once
            ids = self._render(self.template.format(rubric=self.rubric, prompt=prompt_text, **answers))
            overflow = len(ids) - self.max_length
            if overflow <= 0:
                return ids
            prompt_tokens = len(self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
            prompt_text = self._cut(prompt_text, max(prompt_tokens - overflow - 8, 1), keep_end=True)
        raise ValueError(f"a judge prompt is {len(ids)} tokens even with the user's prompt cut; raise max_length "
                         f"({self.max_length}) or lower max_answer_tokens ({self.max_answer_tokens})")

    def _render(self, text: str) -> list[int]:
        if self.chat_template:
            rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                          add_generation_prompt=True)
            return self.tokenizer(rendered + self.response_prefix, add_special_tokens=False)["input_ids"]
        return self.tokenizer(text + self.response_prefix)["input_ids"]

    @torch.no_grad()
    def choice_probabilities(self, encoded: Sequence[list[int]]) -> Tensor:
        """``[N, C]``: the next-token probabilities of the choices, renormalised over them."""
        pad = self.tokenizer.pad_token_id
        choice_ids = torch.tensor(self.choice_ids, device=self._device)
        out = torch.empty(len(encoded), len(self.choice_ids), dtype=torch.float32)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in chunk)
            # Left padding puts every verdict position last; position ids count real tokens only.
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, i in enumerate(chunk):
                input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                attention_mask[row, width - len(encoded[i]) :] = 1
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=input_ids.to(self._device), attention_mask=attention_mask.to(self._device),
                                position_ids=position_ids.to(self._device), logits_to_keep=1).logits[:, -1]
            out[torch.tensor(chunk)] = logits.float().index_select(-1, choice_ids).softmax(-1).cpu()
        return out


class PairwiseJudge(Judge):
    """Which of two answers is better, as a probability, averaged over both orders."""

    kind = "pairwise"
    default_template = PAIRWISE_TEMPLATE
    default_choices = ("A", "B")
    answer_fields = ("first", "second")

    def _check_choices(self) -> None:
        if len(self.choices) != 2:
            raise ValueError(f"a pairwise judge has two choices (first answer, second answer), got {self.choices}")

    def probability_first_better(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> Tensor:
        """``[N]``: P(``first[i]`` is better than ``second[i]``), the mean over both orders."""
        if not len(prompts) == len(first) == len(second):
            raise ValueError(f"{len(prompts)} prompts, {len(first)} first and {len(second)} second answers")
        n = len(prompts)
        encoded = [self.encode(p, first=a, second=b) for p, a, b in zip(prompts, first, second)]
        encoded += [self.encode(p, first=b, second=a) for p, a, b in zip(prompts, first, second)]
        probabilities = self.choice_probabilities(encoded)
        return (probabilities[:n, 0] + probabilities[n:, 1]) / 2

    def group_scores(self, prompts: Sequence[str], groups: Sequence[Sequence[str]]) -> list[list[float]]:
        """Each answer's mean probability of beating the others of its group (its prompt's
        K answers), from all K(K-1)/2 pairs, both orders each. With K = 2 the scores are
        p and 1 - p, so the best-worst pair's margin is 2p - 1."""
        pairs = [(g, i, j) for g, group in enumerate(groups) for i in range(len(group)) for j in range(i + 1, len(group))]
        wins = self.probability_first_better([prompts[g] for g, _, _ in pairs], [groups[g][i] for g, i, _ in pairs],
                                             [groups[g][j] for g, _, j in pairs]).tolist()
        totals = [[0.0] * len(group) for group in groups]
        for (g, i, j), p in zip(pairs, wins):
            totals[g][i] += p
            totals[g][j] += 1 - p
        return [[total / max(len(group) - 1, 1) for total in row] for row, group in zip(totals, groups)]


class JudgeReward(Judge, RewardSource):
    """A pointwise judge as a reward source: the expected rating over the choice tokens."""

    kind = "pointwise"
    default_template = POINTWISE_TEMPLATE
    default_choices = ("1", "2", "3", "4", "5")
    answer_fields = ("completion",)

    def __init__(self, path: str, values: list[float] | None = None, **kwargs):
        """
        Args:
            path: the judge model (see :class:`Judge` for the other arguments)
            values: the rating each choice stands for (default: the choice read as a number)
        """
        super().__init__(path, **kwargs)
        stored = read_judge_file(path).get("values")
        values = values if values is not None else stored
        try:
            self.values = [float(v) for v in (values if values is not None else self.choices)]
        except ValueError:
            raise ValueError(f"the judge's choices {self.choices} are not numbers: give each one's value in `values`") from None
        if len(self.values) != len(self.choices):
            raise ValueError(f"{len(self.choices)} choices but {len(self.values)} values")

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        encoded = [self.encode(p, completion=c) for p, c in zip(prompts, completions)]
        return self.choice_probabilities(encoded) @ torch.tensor(self.values)


def read_judge_file(path: str) -> dict:
    """A judge directory's ``judge.json``, or ``{}``."""
    from lightning_rlhf.models import builtin

    if builtin.is_builtin(path):
        path = builtin.resolve(path)
    file = Path(path).expanduser() / JUDGE_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def write_judge_file(directory: str | Path, kind: str, **settings) -> Path:
    """Write ``judge.json``: what a judge directory needs besides its weights."""
    file = Path(directory) / JUDGE_FILE
    file.write_text(json.dumps({"kind": kind, **settings}, indent=2) + "\n")
    return file


def load_judge(spec: str | dict | PairwiseJudge) -> PairwiseJudge:
    """A pairwise judge from a model (directory, hub id, ``builtin:`` name), a class-spec
    dict, or a ``.yaml``/``.json`` spec file (``class_path: lightning_rlhf.rewards.PairwiseJudge``,
    at the top level or under ``judge:``)."""
    if isinstance(spec, PairwiseJudge):
        return spec
    if isinstance(spec, str) and _is_spec_file(spec):
        spec = _read_spec_file(spec)
    if isinstance(spec, dict):
        parser, config = _parse(spec)
        return parser.instantiate_classes(config).judge
    return PairwiseJudge(spec)


def check_judge_spec(spec: str | dict) -> None:
    """Validate a judge spec (dict or file) without loading the model: class path,
    argument names and types. A model name is not a spec and passes unchecked."""
    if isinstance(spec, str):
        if not _is_spec_file(spec):
            return
        spec = _read_spec_file(spec)
    _parse(spec)


def _is_spec_file(spec: str) -> bool:
    if Path(spec).suffix.lower() not in (".yaml", ".yml", ".json"):
        return False
    if not Path(spec).is_file():
        raise FileNotFoundError(f"judge spec file {spec!r} does not exist")
    return True


def _read_spec_file(path: str) -> dict:
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    config = config.get("judge", config) if isinstance(config, dict) else config
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(f"{path}: expected a judge spec with a class_path (at the top level or under 'judge')")
    return config


def _parse(spec: dict):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--judge", type=PairwiseJudge)
    return parser, parser.parse_object({"judge": spec})
