"""The row formats users already have, checked and brought to one canonical shape.

Text is either *standard* (a string) or *conversational* (a list of ``{"role",
"content"}`` messages, rendered with the tokenizer's chat template). Supported rows:

- SFT: ``{"prompt", "completion"}``, ``{"messages"}`` (the last assistant message is
  the completion) or ``{"text"}`` (no prompt: every token is trained).
- Preference: ``{"prompt", "chosen", "rejected"}`` (explicit prompt) or
  ``{"chosen", "rejected"}`` (implicit prompt: the shared beginning is the prompt), with
  optional ``margin`` (float) and ``rating`` (a label a reward plugin maps to a margin).
  Conversational ``chosen``/``rejected`` lists that repeat the prompt's turns before the
  answer (UltraFeedback's layout) are split: the shared leading messages are the prompt,
  and a ``prompt`` column beside them must say the same (the same messages, or as a
  string the content of the last shared user turn).

Other columns are ignored. Columns with other names are read through a column map
(``columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"}``),
which every data module takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_rlhf.data.errors import DataError

Text = str | list[dict]
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class SFTExample:
    prompt: Text
    completion: Text


@dataclass
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    rating: str | None = None


class RowChecker:
    """Reads typed fields from one row, raising a :class:`DataError` that locates it.

    ``columns`` maps a field to the column that holds it (``{"chosen": "response_j"}``):
    ``record`` then holds the field under its own name, and an error about it names the
    column and the map.
    """

    def __init__(self, source: str, row: int, record: dict, columns: dict[str, str] | None = None):
        self.source, self.row, self.columns = source, row, columns or {}
        self.columns_present = sorted(record)
        if self.columns:
            mapped = set(self.columns.values())
            renamed = {field: record[column] for field, column in self.columns.items() if column in record}
            record = {key: value for key, value in record.items() if key not in mapped} | renamed
        self.record = record

    def error(self, field: str | None, problem: str) -> DataError:
        if field in self.columns:
            problem = f"{problem} (the field is read from column {self.columns[field]!r}, as `columns` maps it)"
        return DataError(self.source, self.row, field, problem)

    def missing(self, field: str, what: str = "missing") -> DataError:
        return self.error(field, f"{what}; the row has fields {self.columns_present}")

    def has(self, field: str) -> bool:
        return self.record.get(field) is not None

    def text(self, field: str) -> Text:
        if field not in self.record or self.record[field] is None:
            raise self.missing(field)
        value = self.record[field]
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return self.messages(field, value)
        raise self.error(field, f"expected a string or a list of messages, got {type(value).__name__}")

    def messages(self, field: str, value: list) -> list[dict]:
        if not value:
            raise self.error(field, "empty list of messages")
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
                raise self.error(field, f"message {i} must be an object with 'role' and 'content'")
            if message["role"] not in ROLES:
                raise self.error(field, f"message {i} has unknown role {message['role']!r}; expected one of {ROLES}")
            if not isinstance(message["content"], str):
                raise self.error(field, f"message {i} content must be a string, got {type(message['content']).__name__}")
        return [{"role": m["role"], "content": m["content"]} for m in value]

    def number(self, field: str) -> float | None:
        value = self.record.get(field)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise self.error(field, "expected a number, got a boolean")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(field, f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise self.error(field, f"expected a finite number, got {value!r}")
        return number

    def optional_string(self, field: str) -> str | None:
        value = self.record.get(field)
        return None if value is None else str(value)


def parse_sft(checker: RowChecker) -> SFTExample:
    if checker.has("messages"):
        messages = checker.text("messages")
        if not isinstance(messages, list) or messages[-1]["role"] != "assistant":
            raise checker.error("messages", "expected a list of messages ending with an assistant message")
        return SFTExample(prompt=messages[:-1], completion=[messages[-1]])
    if checker.has("text") and not checker.has("completion"):
        text = checker.text("text")
        if not isinstance(text, str):
            raise checker.error("text", "expected a string")
        return SFTExample(prompt="", completion=text)
    if not checker.has("completion"):
        raise checker.error(None, f"an SFT row needs 'prompt' and 'completion', 'messages', or 'text'; it has {checker.columns_present}")
    prompt = checker.text("prompt") if checker.has("prompt") else ""
    completion = checker.text("completion")
    _check_same_kind(checker, prompt, completion, "completion")
    if isinstance(completion, str) and isinstance(prompt, list):
        raise checker.error("completion", "a conversational prompt needs a conversational completion")
    return SFTExample(prompt=prompt, completion=completion)


def parse_preference(checker: RowChecker) -> PreferenceExample:
    chosen, rejected = checker.text("chosen"), checker.text("rejected")
    if type(chosen) is not type(rejected):
        raise checker.error("rejected", "chosen and rejected must both be strings or both be message lists")
    if not checker.has("prompt"):
        prompt, chosen, rejected = split_implicit_prompt(checker, chosen, rejected)
    elif isinstance(chosen, list) and _shared_messages(chosen, rejected):
        prompt, chosen, rejected = split_repeated_prompt(checker, checker.text("prompt"), chosen, rejected)
    else:
        prompt = checker.text("prompt")
        if isinstance(prompt, str) and isinstance(chosen, list) and prompt:
            # a string prompt before conversational answers: the user's turn
            prompt = [{"role": "user", "content": prompt}]
        _check_same_kind(checker, prompt, chosen, "chosen")
    return PreferenceExample(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        margin=checker.number("margin"),
        rating=checker.optional_string("rating"),
    )


def _shared_messages(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading messages two conversations share, leaving each at least one of its own."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return shared


def split_repeated_prompt(checker: RowChecker, prompt: Text, chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Conversations that repeat the prompt's turns before their answers (UltraFeedback's
    layout): the shared leading messages are the prompt, and the ``prompt`` column must
    agree with them (the same messages, or the content of the last shared user turn)."""
    shared = _shared_messages(chosen, rejected)
    turns = chosen[:shared]
    if isinstance(prompt, list):
        consistent = prompt == turns
    else:
        user_turns = [m["content"] for m in turns if m["role"] == "user"]
        consistent = bool(user_turns) and prompt.strip() == user_turns[-1].strip()
    if not consistent:
        raise checker.error(
            "prompt",
            f"chosen and rejected open with the same {shared} message(s), which should be the prompt, "
            f"but the prompt column says otherwise: {_clip(prompt)} vs {_clip(turns)}",
        )
    return turns, chosen[shared:], rejected[shared:]


def _clip(value: Text, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_same_kind(checker: RowChecker, prompt: Text, completion: Text, field: str) -> None:
    if isinstance(prompt, list) != isinstance(completion, list) and prompt != "":
        raise checker.error(field, "prompt and completion must both be strings or both be message lists")


def split_implicit_prompt(checker: RowChecker, chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """The shared beginning of chosen and rejected is the prompt.

    For conversations, the longest shared run of whole messages; for strings, the longest
    shared prefix cut back to the last whitespace, so a word both answers start with
    ("good" / "great") is not split between prompt and completion.
    """
    if isinstance(chosen, list):
        shared = _shared_messages(chosen, rejected)
        if shared == 0:
            raise checker.error("chosen", "implicit prompt: chosen and rejected share no opening messages")
        return chosen[:shared], chosen[shared:], rejected[shared:]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and not chosen[shared - 1].isspace():
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]
