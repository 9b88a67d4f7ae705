"""Reward sources built from other reward sources: a weighted sum, and Llama 2's
helpfulness + safety composition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_rlhf.rewards.base import RewardSource, import_function


class WeightedSum(RewardSource):
    """``sum_i w_i * source_i(prompt, completion)``, each source's own scores kept for logging.

    The sources score concurrently, each in a thread of its own: a reward function that
    waits on a sandbox or a server (``async def`` ones included) does not hold up the
    others. After each call, ``last_components`` maps each source's name to its own
    (unweighted) scores; the online module logs their means as ``train/reward/<name>``."""

    reads_columns = True  # handed on to the sources that read them

    def __init__(self, sources: list[RewardSource], weights: list[float] | None = None, names: list[str] | None = None):
        """
        Args:
            sources: the reward sources to add up
            weights: one per source (default: all 1)
            names: one per source, for the logged metrics (default: a reward function's
                name, or the source's class name; repeated names are numbered)
        """
        if not sources:
            raise ValueError("WeightedSum needs at least one source")
        weights = [1.0] * len(sources) if weights is None else list(weights)
        if len(weights) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
        names = [source_name(source) for source in sources] if names is None else list(names)
        if len(names) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(names)} names")
        self.sources, self.weights, self.names = list(sources), weights, _numbered(names)
        self.last_components: dict[str, Tensor] = {}

    def parts(self) -> dict[str, RewardSource]:
        return dict(zip(self.names, self.sources, strict=True))

    def score(self, prompts, completions, columns: list[dict] | None = None) -> Tensor:
        if len(self.sources) == 1:
            parts = [self.sources[0](prompts, completions, columns)]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=len(self.sources)) as pool:
                parts = list(pool.map(lambda source: source(prompts, completions, columns), self.sources))
        self.last_components = dict(zip(self.names, parts, strict=True))
        return sum(w * part for w, part in zip(self.weights, parts, strict=True))


def source_name(source: RewardSource) -> str:
    """A short name for a reward source in logged metrics: a function's own name, else the class's."""
    function = getattr(source, "function", None)
    return function.rpartition(".")[2] if isinstance(function, str) else type(source).__name__


def _numbered(names: list[str]) -> list[str]:
    counts = {name: names.count(name) for name in names}
    seen: dict[str, int] = {}
    numbered = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        numbered.append(f"{name}_{seen[name]}" if counts[name] > 1 else name)
    return numbered


class SafetyGatedReward(RewardSource):
    """Llama 2's reward for RLHF: the safety model's score on safety prompts and on unsafe-
    looking answers, the helpfulness model's otherwise; then logit and whitening.

    Llama 2 (Touvron et al. 2023, arXiv:2307.09288) §3.2.2, for a prompt p and generation g::

        R_c(g|p) = R_s(g|p)  if IS_SAFETY(p) or R_s(g|p) < threshold  else  R_h(g|p)
        R(g|p)   = WHITEN(LOGIT(R_c(g|p)))

    with ``threshold = 0.15`` on scores in [0, 1] (the paper's RMs' outputs, read as
    probabilities; the paper's Eq. also subtracts a KL penalty, which is the PPO stage's job).
    LOGIT is the inverse sigmoid, undoing the sigmoid's squashing before whitening;
    scores are clamped to ``[eps, 1 - eps]`` first so it stays finite.

    ``scores="logit"`` (the default) is for sources that return real-valued scores, as a
    reward model trained here with Bradley-Terry does: sigmoid turns them into the [0, 1]
    scores above, so the result is the selected raw score, clipped at +-logit(1 - eps),
    whitened. ``scores="probability"`` is for sources that already return [0, 1].

    WHITEN uses ``mean`` and ``std`` when both are given. Otherwise it uses running
    statistics of every LOGIT(R_c) this source has produced in training, the current batch
    included (merged in before the batch is whitened, so the first batch is whitened by its
    own statistics); :meth:`reset_statistics` forgets them. They are the source's
    :meth:`state_dict` (a resumed run goes on with them), and they do not move while the
    source is in eval mode (validation): a batch is then whitened by the statistics as they
    are, or by its own when there are none yet.

    Which prompts are safety prompts: ``is_safety`` (a function of the prompts),
    ``safety_prompts`` (the prompts themselves, listed), or per call ``safety_flags``;
    with none of them only the threshold sends a score to the safety model.
    """

    def __init__(
        self,
        helpfulness: RewardSource,
        safety: RewardSource,
        threshold: float = 0.15,
        scores: Literal["logit", "probability"] = "logit",
        is_safety: str | None = None,
        safety_prompts: list[str] | str | None = None,
        whiten: bool = True,
        mean: float | None = None,
        std: float | None = None,
        eps: float = 1e-6,
    ):
        """
        Args:
            helpfulness: the helpfulness reward source (R_h)
            safety: the safety reward source (R_s)
            threshold: a safety score (in [0, 1]) below this counts as unsafe; Llama 2 uses 0.15
            scores: ``logit`` if the sources return real-valued scores (sigmoid maps them
                to [0, 1]), ``probability`` if they return [0, 1] scores
            is_safety: dotted path to a function ``(prompts: list[str]) -> list[bool]``
                that says which prompts are safety prompts
            safety_prompts: the safety prompts themselves: a list, or a file (.txt: one
                per line; .jsonl: rows with a ``prompt`` field)
            whiten: standardise LOGIT(R_c) (Llama 2's WHITEN); off returns LOGIT(R_c)
            mean: fixed whitening mean (with ``std``); default: running statistics
            std: fixed whitening standard deviation (with ``mean``)
            eps: scores are clamped to [eps, 1 - eps] before LOGIT
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is a score in (0, 1), got {threshold}")
        if scores not in ("logit", "probability"):
            raise ValueError(f"scores must be 'logit' or 'probability', got {scores!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for fixed whitening, or neither for running statistics")
        if std is not None and std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        self.helpfulness, self.safety, self.threshold, self.scores = helpfulness, safety, threshold, scores
        self.is_safety, self.safety_prompts = is_safety, safety_prompts
        self.whiten, self.mean, self.std, self.eps = whiten, mean, std, eps
        self._is_safety = import_function(is_safety) if is_safety else None
        self._safety_prompts = _read_prompt_list(safety_prompts) if safety_prompts is not None else set()
        self.reset_statistics()

    def reset_statistics(self) -> None:
        self.count, self.running_mean, self.running_m2 = 0, 0.0, 0.0

    def parts(self) -> dict[str, RewardSource]:
        return {"helpfulness": self.helpfulness, "safety": self.safety}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "count": self.count, "running_mean": self.running_mean, "running_m2": self.running_m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = ("count", "running_mean", "running_m2")
        missing = [key for key in own if key not in state]
        if missing:
            raise ValueError(f"the saved SafetyGatedReward state lacks {missing}")
        super().load_state_dict({key: value for key, value in state.items() if key not in own})
        self.count, self.running_mean, self.running_m2 = int(state["count"]), float(state["running_mean"]), float(state["running_m2"])

    def safety_flags(self, prompts: Sequence[str]) -> Tensor:
        """``[N]`` bool: which prompts are safety prompts."""
        flags = [p in self._safety_prompts for p in prompts]
        if self._is_safety is not None:
            computed = list(self._is_safety(list(prompts)))
            if len(computed) != len(prompts):
                raise ValueError(f"{self.is_safety} returned {len(computed)} flags for {len(prompts)} prompts")
            flags = [a or bool(b) for a, b in zip(flags, computed)]
        return torch.tensor(flags, dtype=torch.bool)

    def score(self, prompts, completions, safety_flags: Sequence[bool] | None = None) -> Tensor:
        """Scores of the pairs; ``safety_flags`` overrides ``is_safety``/``safety_prompts``."""
        helpful = self._probabilities(self.helpfulness(prompts, completions))
        safe = self._probabilities(self.safety(prompts, completions))
        flags = self.safety_flags(prompts) if safety_flags is None else torch.as_tensor(list(safety_flags), dtype=torch.bool)
        combined = torch.where(flags | (safe < self.threshold), safe, helpful)
        logits = torch.logit(combined.clamp(self.eps, 1 - self.eps))
        return self._whiten(logits).float()

    def _probabilities(self, scores: Tensor) -> Tensor:
        scores = scores.double()  # float32 sigmoid saturates at 1 for scores past ~17
        return torch.sigmoid(scores) if self.scores == "logit" else scores

    def _whiten(self, values: Tensor) -> Tensor:
        if not self.whiten:
            return values
        if self.mean is not None:
            return (values - self.mean) / self.std
        if self.training:
            self.count, self.running_mean, self.running_m2 = self._merged(values)
            count, mean, m2 = self.count, self.running_mean, self.running_m2
        else:
            count, mean, m2 = (self.count, self.running_mean, self.running_m2) if self.count else self._merged(values)
        variance = m2 / (count - 1) if count > 1 else 1.0
        return (values - mean) / max(variance, 1e-12) ** 0.5

    def _merged(self, values: Tensor) -> tuple[int, float, float]:
        """(count, mean, M2) of the running statistics with ``values`` merged in."""
        # Chan et al.'s parallel merge of (count, mean, M2): exact, batch after batch.
        n = values.numel()
        batch_mean = values.mean().item()
        batch_m2 = ((values - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.running_mean
        return total, self.running_mean + delta * n / total, self.running_m2 + batch_m2 + delta**2 * self.count * n / total


def _read_prompt_list(source: list[str] | str) -> set[str]:
    if not isinstance(source, str):
        return set(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"safety_prompts file {source!r} does not exist")
    if path.suffix == ".txt":
        return {line for line in path.read_text().splitlines() if line.strip()}
    from lightning_rlhf.data.formats import RowChecker
    from lightning_rlhf.data.readers import read_rows

    prompts = set()
    for row, record in read_rows(path):
        checker = RowChecker(source, row, record)
        prompt = checker.text("prompt")
        if not isinstance(prompt, str):
            raise checker.error("prompt", "reward sources score text: expected a string")
        prompts.add(prompt)
    return prompts
