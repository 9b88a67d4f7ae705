"""A table of sample completions in W&B, every N steps of a policy run."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

COLUMNS = ["step", "prompt", "completion", "reward", "reference completion"]


class SampleCompletionsCallback(Callback):
    """Greedy (or sampled) completions of a few fixed prompts, logged as a W&B table.

    Reading what the policy writes is the quickest check that a falling loss means a
    better model (and the first place reward hacking shows). Prompts are the recipe's, or
    the first ``num_prompts`` rows of the validation data (else the training data), with
    that row's chosen/target completion as the reference. Rows: ``step, prompt,
    completion, reward, reference completion``; the table key is ``samples``.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        prompts: list[str] | None = None,
        num_prompts: int = 4,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        reward: str | None = None,
        seed: int = 0,
    ):
        """
        Args:
            every_n_steps: log a table every this many optimizer steps (and at the end)
            prompts: prompts to complete; default: the first ``num_prompts`` of the data
            num_prompts: how many data prompts to take when ``prompts`` is not given
            max_new_tokens: longest completion
            temperature: 0 decodes greedily (the same prompts read the same way at every step)
            reward: a reward source to score completions (``gold``, a reward-model folder,
                ``pkg.mod.fn``...; see ``lightning-rlhf score``); none: the column is empty
            seed: sampling seed when ``temperature > 0``
        """
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.prompts, self.num_prompts = prompts, num_prompts
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.reward_spec = reward
        self._reward_source = None
        self._references: list[str] = []
        self._last_logged_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.prompts is None:
            self.prompts, self._references = data_prompts(trainer.datamodule, pl_module.tokenizer, self.num_prompts)
        if self.reward_spec is not None and self._reward_source is None:
            from lightning_rlhf.rewards.spec import load_reward_source

            self._reward_source = load_reward_source(self.reward_spec)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_samples(trainer, pl_module)

    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[list]:
        step = trainer.global_step
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if step == self._last_logged_step or not self.prompts or not trainer.is_global_zero:
            return []
        self._last_logged_step = step
        rows = self.table_rows(pl_module, step)
        for logger in loggers:
            logger.log_table(key="samples", columns=COLUMNS, data=rows, step=step)
        return rows

    def table_rows(self, pl_module: L.LightningModule, step: int) -> list[list]:
        from lightning_rlhf.generation import sample

        samples = sample(
            pl_module.policy,
            pl_module.tokenizer,
            self.prompts,
            n=1,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )
        completions = [s[0].text for s in samples]
        rewards: list[float | None] = [None] * len(completions)
        if self._reward_source is not None:
            rewards = [float(r) for r in self._reward_source.score(self.prompts, completions)]
        references = self._references or [""] * len(completions)
        return [[step, p, c, r, ref] for p, c, r, ref in zip(self.prompts, completions, rewards, references)]


def data_prompts(datamodule, tokenizer, count: int) -> tuple[list[str], list[str]]:
    """Prompt texts and reference completions of the first ``count`` encoded data rows."""
    rows = list(getattr(datamodule, "val_rows", None) or getattr(datamodule, "train_rows", None) or [])[:count]
    special = {tokenizer.bos_token_id} - {None}
    prompts, references = [], []
    for row in rows:
        # The data modules encode prompts with BOS; generation adds it back when encoding.
        prompt_ids = [t for i, t in enumerate(row.get("prompt_ids", [])) if not (i == 0 and t in special)]
        reference_ids = row.get("chosen_ids") or row.get("completion_ids") or []
        prompts.append(tokenizer.decode(prompt_ids))
        references.append(tokenizer.decode(reference_ids, skip_special_tokens=True))
    return prompts, references
