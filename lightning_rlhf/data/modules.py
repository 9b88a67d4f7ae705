"""LightningDataModules: read rows, check them, tokenise them, batch them."""

from __future__ import annotations

import logging
import random
from typing import ClassVar

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lightning_rlhf.data.collate import CachedReferenceCollator, PreferenceCollator, SFTCollator
from lightning_rlhf.data.errors import DataError
from lightning_rlhf.data.formats import RowChecker, parse_preference, parse_sft
from lightning_rlhf.data.length_grouping import example_length, padding_share
from lightning_rlhf.data.readers import read_rows
from lightning_rlhf.data.sampler import ResumableDataLoader
from lightning_rlhf.data.tokenize import RenderError, Tokenization

log = logging.getLogger(__name__)

PADDING_HINT = 0.30  # above this share of padding, setup suggests group_by_length


class TextDataModule(L.LightningDataModule):
    """Shared machinery; subclasses say how a row is parsed, encoded and collated.

    What it needs from the model comes in through public calls, never by reading the
    module: :meth:`connect` hands it the model's tokenizer (the policy and reward modules
    call it from their ``setup``), :meth:`use_reference_cache` the cached reference
    log-probs its collators add to each batch (``lightning_rlhf.reference_cache``), and
    :meth:`cacheable_rows` is what that cache is computed over.
    """

    data_kind: ClassVar[str]
    #: the fields a row of this kind is read from; ``columns`` may map any of them
    fields: ClassVar[tuple[str, ...]]
    #: each row collates to the same sequences whatever batch it is in, so reference
    #: log-probs can be computed once per sequence (see ``lightning_rlhf.reference_cache``)
    reference_cacheable: ClassVar[bool] = True

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        val_fraction: float = 0.0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        max_length: int = 1024,
        max_prompt_length: int | None = None,
        split: str = "train",
        chat_template: str | None = None,
        tokenizer: str | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int = 1,
        seed: int = 0,
        group_by_length: bool = False,
        columns: dict[str, str] | None = None,
    ):
        """
        Args:
            path: JSONL/JSON/Parquet/CSV file, a directory saved by ``datasets``, or a hub id
            val_path: held-out rows; if not given, ``val_fraction`` of ``path`` is held out
            val_fraction: share of ``path`` held out for validation when there is no ``val_path``
            batch_size: rows (prompts or pairs) per batch, per device
            max_length: longest sequence, prompt and completion together, in tokens
            max_prompt_length: longest prompt in tokens (default: half of ``max_length``)
            split: the split to read from a dataset with several
            chat_template: overrides the tokenizer's template for conversational rows
            tokenizer: tokenizer id or path; default: the model's, handed over by :meth:`connect`
            pad_to_multiple_of: pad batch width to a multiple of this (tensor-core friendly)
            seed: shuffling and the validation split
            group_by_length: batch rows of similar length together, so that little of a batch
                is padding (shuffled in megabatches of 50 batches, see ``data.length_grouping``);
                validation rows are then read shortest first
            columns: where each field is, when the file names it otherwise, e.g.
                ``{prompt: question, chosen: response_j, rejected: response_k}``
        """
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path, self.val_path, self.val_fraction = path, val_path, val_fraction
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.split, self.chat_template = split, chat_template
        self.tokenizer_name = tokenizer
        self.num_workers, self.pad_to_multiple_of, self.seed = num_workers, pad_to_multiple_of, seed
        self.group_by_length = group_by_length
        self.columns = self.check_columns(columns or {})
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.model_tokenizer: PreTrainedTokenizerBase | None = None  # handed over by connect()
        self._stage_waiting_for_tokenizer: str | None = None  # setup() ran before connect()
        self.train_rows: list[dict] = []
        self.val_rows: list[dict] = []
        self.drop_reports: list[str] = []
        self.reference_cache = None  # see use_reference_cache(); read by the collators at every batch

    # -- what subclasses provide ------------------------------------------------------
    def parse(self, checker: RowChecker):
        raise NotImplementedError

    def encode(self, example, tokenization: Tokenization) -> dict | None:
        """Token ids for one parsed row, or None (after ``tokenization.drop``) to drop it."""
        raise NotImplementedError

    def collator(self):
        raise NotImplementedError

    def row_length(self, row: dict) -> int:
        """The width a row takes in a batch, for ``group_by_length``."""
        return example_length(row)

    # -- the machinery ----------------------------------------------------------------
    def check_columns(self, columns: dict[str, str]) -> dict[str, str]:
        if not columns:
            return {}
        unknown = sorted(set(columns) - set(self.fields))
        if unknown:
            raise ValueError(f"columns: {type(self).__name__} reads no field {', '.join(map(repr, unknown))}; "
                             f"its fields are {', '.join(self.fields)}")
        sources = list(columns.values())
        if len(set(sources)) != len(sources):
            raise ValueError(f"columns: one column mapped to two fields in {columns}")
        return dict(columns)

    # -- what the model hands over -------------------------------------------------------
    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Hand over the model's tokenizer, used unless ``tokenizer`` names another.

        Lightning sets the data module up before the module, so when ``setup`` finds no
        tokenizer under a trainer the rows wait: the module's ``setup`` calls this, and the
        rows are read then. Code that sets a data module up itself calls it first.
        """
        self.model_tokenizer = tokenizer
        stage, self._stage_waiting_for_tokenizer = self._stage_waiting_for_tokenizer, None
        if stage is not None:
            self.setup(stage)

    def use_reference_cache(self, cache) -> None:
        """From the next batch on, the collators add ``cache``'s reference log-probs to every
        batch whose rows it holds (``cache.add_to(batch)``); None stops it."""
        self.reference_cache = cache

    def cacheable_rows(self) -> tuple[list[dict], list[dict]] | None:
        """The (training, validation) rows a reference cache is computed over, or None: before
        ``setup``, or for a data kind whose sequences depend on the batch they are in."""
        if not self.train_rows or not self.reference_cacheable:
            return None
        return self.train_rows, self.val_rows

    def _resolve_tokenizer(self) -> PreTrainedTokenizerBase | None:
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_name is not None:
            from lightning_rlhf.models.config import ModelSettings
            from lightning_rlhf.models.loading import load_tokenizer

            return load_tokenizer(ModelSettings(name_or_path=self.tokenizer_name))
        return self.model_tokenizer

    def load(self, path: str) -> list[dict]:
        """Read, check and tokenise every row of ``path``."""
        tokenization = Tokenization(self.tokenizer, self.max_length, self.max_prompt_length, self.chat_template)
        rows, total = [], 0
        for row, record in read_rows(path, self.split):
            total += 1
            checker = RowChecker(path, row, record, self.columns)
            example = self.parse(checker)
            try:
                encoded = self.encode(example, tokenization)
            except RenderError as e:
                raise DataError(path, row, None, str(e)) from None
            if encoded is not None:
                rows.append(encoded)
        if total == 0:
            raise DataError(path, None, None, "no rows")
        report = tokenization.drop_report(total, path)
        if report:
            log.warning(report)
            self.drop_reports.append(report)
        if not rows:
            raise DataError(path, None, None, f"every row was dropped ({report})")
        return rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows:
            return
        tokenizer = self._resolve_tokenizer()
        if tokenizer is None:
            if self.trainer is None:
                raise ValueError(f"{type(self).__name__} needs a tokenizer: give `tokenizer`, or attach it to a module that has one")
            self._stage_waiting_for_tokenizer = stage or "fit"  # read when the module connects (see connect)
            return
        self.tokenizer = tokenizer
        rows = self.load(self.path)
        if self.val_path is not None:
            self.train_rows, self.val_rows = rows, self.load(self.val_path)
        elif self.val_fraction > 0:
            order = list(range(len(rows)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, int(len(rows) * self.val_fraction))
            held_out = set(order[:n_val])
            self.val_rows = [r for i, r in enumerate(rows) if i in held_out]
            self.train_rows = [r for i, r in enumerate(rows) if i not in held_out]
        else:
            self.train_rows = rows
        self._hint_padding()

    def _hint_padding(self) -> None:
        """One line when random batches would be more than 30% padding and rows are not
        grouped by length: grouping measured faster end to end (README, "Speed")."""
        if self.group_by_length or (self.trainer is not None and not self.trainer.is_global_zero):
            return
        share = padding_share([self.row_length(row) for row in self.train_rows], self.batch_size, self.seed)
        if share > PADDING_HINT:
            log.warning("data: about %.0f%% of each batch's tokens would be padding; `data.group_by_length: true` "
                        "batches rows of similar length", 100 * share)

    def _check_rows_read(self) -> None:
        if self._stage_waiting_for_tokenizer is not None:  # no module connected a tokenizer
            raise ValueError(f"{type(self).__name__} needs a tokenizer: give `tokenizer`, or attach it to a module that has one")

    def train_dataloader(self) -> DataLoader:
        self._check_rows_read()
        # Resumable mid-epoch: the order is a function of (seed, epoch), the position is saved
        # in checkpoints (see data.sampler); each rank reads its own shard.
        trainer = self.trainer
        return ResumableDataLoader(
            self.train_rows,
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle=True,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            # batches of one optimiser step are counted together, for token-averaged losses
            accumulate=trainer.accumulate_grad_batches if trainer is not None else 1,
            lengths=[self.row_length(row) for row in self.train_rows] if self.group_by_length else None,
            collate_fn=CachedReferenceCollator(self.collator(), self),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        self._check_rows_read()
        if not self.val_rows:
            return []
        rows = sorted(self.val_rows, key=self.row_length) if self.group_by_length else self.val_rows
        collate = CachedReferenceCollator(self.collator(), self)
        return DataLoader(rows, batch_size=self.val_batch_size, collate_fn=collate, num_workers=self.num_workers)


class SFTDataModule(TextDataModule):
    """Prompt/completion rows for supervised fine-tuning (see ``data.formats``)."""

    data_kind = "sft"
    fields = ("prompt", "completion", "messages", "text")

    def __init__(self, *args, train_on_prompt: bool = False, **kwargs):
        """
        Args:
            train_on_prompt: train on every token, prompt included, not only the completion
        """
        super().__init__(*args, **kwargs)
        self.train_on_prompt = train_on_prompt

    def parse(self, checker: RowChecker):
        return parse_sft(checker)

    def encode(self, example, tokenization: Tokenization) -> dict | None:
        tokens = tokenization.encode(example.prompt, example.completion)
        if tokens is None:
            return None
        if self.train_on_prompt:
            return {"prompt_ids": [], "completion_ids": tokens.prompt_ids + tokens.completion_ids}
        return {"prompt_ids": tokens.prompt_ids, "completion_ids": tokens.completion_ids}

    def collator(self):
        return SFTCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)


class PreferenceDataModule(TextDataModule):
    """Chosen/rejected pairs, explicit or implicit prompt (see ``data.formats``)."""

    data_kind = "preference"
    fields = ("prompt", "chosen", "rejected", "margin", "rating")

    def __init__(self, *args, share_prompt: bool = False, **kwargs):
        """
        Args:
            share_prompt: run each pair as one row, the prompt once and the rejected
                completion unable to see the chosen one (``data.shared_prompt``): the same
                log-probs for fewer tokens and no padding between chosen and rejected
        """
        super().__init__(*args, **kwargs)
        self.share_prompt = share_prompt

    def row_length(self, row: dict) -> int:
        if self.share_prompt:
            return len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])
        return example_length(row)

    def parse(self, checker: RowChecker):
        return parse_preference(checker)

    def encode(self, example, tokenization: Tokenization) -> dict | None:
        prompt_text, chosen_text = tokenization.render(example.prompt, example.chosen)
        _, rejected_text = tokenization.render(example.prompt, example.rejected)
        if not chosen_text.strip() or not rejected_text.strip():
            tokenization.drop("empty completion")
            return None
        if chosen_text == rejected_text:
            tokenization.drop("chosen identical to rejected")
            return None
        prompt_ids = tokenization.prompt_ids(prompt_text)
        chosen = tokenization.truncate(prompt_ids, tokenization.completion_ids(chosen_text))
        rejected = tokenization.truncate(prompt_ids, tokenization.completion_ids(rejected_text))
        if chosen is None or rejected is None:
            tokenization.drop("completion empty after truncation")
            return None
        if chosen.completion_ids == rejected.completion_ids:
            # Two answers that differ only past max_length carry no preference signal.
            tokenization.drop("chosen identical to rejected after truncation")
            return None
        row = {"prompt_ids": chosen.prompt_ids, "chosen_ids": chosen.completion_ids, "rejected_ids": rejected.completion_ids}
        if example.margin is not None:
            row["margin"] = example.margin
        if example.rating is not None:
            row["rating"] = example.rating
        return row

    def collator(self):
        return PreferenceCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of, self.share_prompt)
