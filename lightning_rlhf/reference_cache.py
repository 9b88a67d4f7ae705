"""Reference log-probabilities computed once per example and reused.

The reference model is frozen, so ``log pi_ref(y_t | x, y_<t)`` of a training sequence
never changes: computing it at every step of every epoch (a third of a DPO step's
model FLOPs: one forward beside the policy's forward and backward) is waste. At the start of
``fit`` the module runs the reference once over every training and validation row
(length-sorted batches, no gradient, under the run's precision), keeps the per-token
values of each sequence's completion, and the data loader puts them in each batch as
``reference_token_logps`` ``[N, T-1]``; ``PolicyModule.reference_logps`` returns them
instead of running the model. Plugins do not see the difference.

**Keys.** Each sequence is found by its content: ``hash((prompt tokens, all tokens))``
of the row as laid out in the batch, so any collator's layout works and a sequence
the cache has not seen (e.g. KTO's mismatched pairs, made up per batch) is a miss,
never a wrong value. A batch with any miss falls back to the reference model. The whole
cache carries a key, ``blake2b(reference fingerprint, data fingerprint, precision)``:

- the reference fingerprint hashes the reference's configuration and every weight
  (names, dtypes, shapes, bytes; with a LoRA policy, the base weights, since the
  reference is the policy with adapters off);
- the data fingerprint hashes the tokenised training and validation rows;
- the precision (``bf16-mixed``, ``32-true``...) changes the values.

A changed model, data set or precision gives another key, and the cache is rebuilt.

**Where it lives.** In memory; on disk under ``$LIGHTNING_RLHF_HOME/reference_logps/<key>.pt``
(reused by a later run with the same key); and in every checkpoint (``reference_cache``:
a resumed run reuses it without a reference forward). Once the cache covers every row,
a separate reference copy is released (it is reloaded if a batch ever misses), so
training holds one model, as TRL's ``precompute_ref_log_probs`` does.

Costs: 4 bytes per completion token. Under DDP each rank computes a share of the
batches and the shares are exchanged (``all_gather_object``). Strategies that restore
checkpoints after setup (DeepSpeed) recompute it, or read it from disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

BATCH_KEY = "reference_token_logps"


def sequence_keys(batch: dict[str, Tensor]) -> list[int]:
    """Content key of each row of a collated (right-padded, CPU) batch."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    starts = batch["completion_mask"].int().argmax(-1).tolist()  # first completion token
    ids = batch["input_ids"].tolist()
    return [hash((start, tuple(row[:length]))) for row, start, length in zip(ids, starts, lengths, strict=True)]


@dataclass
class ReferenceCache:
    """Per-token reference log-probs of completion tokens, by sequence content key."""

    key: str
    index: dict[int, tuple[int, int]] = field(default_factory=dict)  # sequence key -> (offset, count)
    values: Tensor = field(default_factory=lambda: torch.zeros(0))  # float32, every sequence's values end to end

    def lookup(self, batch: dict[str, Tensor]) -> Tensor | None:
        """``[N, T-1]`` reference log-probs for a collated batch, zero off the completion;
        None if any row is not cached."""
        positions = batch["completion_mask"][:, 1:]
        counts = positions.sum(-1).tolist()
        out = torch.zeros(positions.shape, dtype=torch.float32)
        for row, (key, count) in enumerate(zip(sequence_keys(batch), counts, strict=True)):
            entry = self.index.get(key)
            if entry is None or entry[1] != count:
                return None
            offset = entry[0]
            out[row, positions[row]] = self.values[offset : offset + count]
        return out

    def add_to(self, batch: dict[str, Tensor]) -> None:
        """Put the batch's values under ``reference_token_logps`` when every row is cached
        (the data module's collators call this)."""
        values = self.lookup(batch)
        if values is not None:
            batch[BATCH_KEY] = values

    def state_dict(self) -> dict:
        keys = list(self.index)
        spans = torch.tensor([self.index[k] for k in keys], dtype=torch.long).reshape(-1, 2)
        return {"key": self.key, "sequence_keys": torch.tensor(keys, dtype=torch.long), "spans": spans, "values": self.values}

    @classmethod
    def from_state_dict(cls, state: dict) -> ReferenceCache:
        spans = state["spans"].tolist()
        index = {k: (s[0], s[1]) for k, s in zip(state["sequence_keys"].tolist(), spans, strict=True)}
        return cls(state["key"], index, state["values"])


# -- fingerprints and the key ------------------------------------------------------------


def model_fingerprint(model: torch.nn.Module) -> str:
    """blake2b of a model's configuration and weights; LoRA adapter weights are left out
    (the reference is the model with its adapters off)."""
    digest = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: Tensor) -> memoryview:
    flat = tensor.reshape(-1).cpu().contiguous()
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def data_fingerprint(*row_lists: list[dict]) -> str:
    """blake2b of tokenised rows (in order)."""
    return hashlib.blake2b(pickle.dumps(row_lists, protocol=4), digest_size=16).hexdigest()


def cache_key(model: str, data: str, precision: str) -> str:
    return hashlib.blake2b(f"{model}|{data}|{precision}".encode(), digest_size=16).hexdigest()


# -- building it -----------------------------------------------------------------------


@torch.no_grad()
def compute_cache(key: str, rows: list[dict], collate, score, batch_size: int, device: torch.device) -> ReferenceCache:
    """Run ``score(batch) -> [N, T-1]`` over ``rows`` in length-sorted batches (this rank's
    share under DDP, then gathered) and index the completion tokens' values."""
    from lightning_rlhf.data.length_grouping import example_length

    order = sorted(range(len(rows)), key=lambda i: example_length(rows[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rank, world = _rank_and_world()
    pieces: list[tuple[list[int], list[int], Tensor]] = []  # (sequence keys, counts, values)
    for batch_rows in batches[rank::world]:
        batch = collate([rows[i] for i in batch_rows])
        keys = sequence_keys(batch)
        positions = batch["completion_mask"][:, 1:]
        on_device = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        values = score(on_device).float().cpu()
        pieces.append((keys, positions.sum(-1).tolist(), values[positions]))
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, pieces)
        pieces = [p for share in gathered for p in share]
    cache, chunks, offset = ReferenceCache(key), [], 0
    for keys, counts, values in pieces:
        chunks.append(values)
        for sequence, count in zip(keys, counts, strict=True):
            cache.index[sequence] = (offset, count)
            offset += count
    cache.values = torch.cat(chunks) if chunks else torch.zeros(0)
    return cache


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def disk_path(key: str) -> Path:
    from lightning_rlhf.models.builtin import cache_root

    return cache_root() / "reference_logps" / f"{key}.pt"


def load_from_disk(key: str) -> ReferenceCache | None:
    path = disk_path(key)
    if not path.exists():
        return None
    try:
        return ReferenceCache.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # a damaged file is recomputed, not trusted
        log.warning("ignoring the unreadable reference cache %s: %s", path, e)
        return None


def save_to_disk(cache: ReferenceCache) -> None:
    path = disk_path(cache.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(cache.state_dict(), f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the module's side --------------------------------------------------------------------

# Strategies under which every process holds whole weights, so the fingerprint and the
# reference forward outside the training step are those of the full model.
CACHING_STRATEGIES = ("SingleDeviceStrategy", "DDPStrategy")


def attach_to_fit(module, datamodule) -> ReferenceCache | None:
    """Find (checkpoint, then disk) or compute the cache for this fit, hand it to the data
    module (``use_reference_cache``), and release a separate reference copy. None when it
    does not apply: no data module with rows, a data kind whose sequences depend on the
    batch (``cacheable_rows`` is None), or a strategy that shards the weights.

    What it uses of each side is public: the data module's ``cacheable_rows()``,
    ``collator()``, ``batch_size`` and ``use_reference_cache()``; the module's
    ``reference_network()``, ``reference_logps()``, ``reference_cache`` and
    ``release_reference_copy()``.
    """
    trainer = module.trainer
    rows = datamodule.cacheable_rows() if callable(getattr(datamodule, "cacheable_rows", None)) else None
    if rows is None:
        return None
    strategy = type(trainer.strategy).__name__
    if strategy not in CACHING_STRATEGIES:
        log.info("reference log-probs are computed at every step under %s (the cache needs whole weights)", strategy)
        return None
    train_rows, val_rows = rows[0], list(rows[1] or [])
    reference = module.reference_network()  # reloaded if an earlier fit released it: the policy has moved
    key = cache_key(model_fingerprint(reference), data_fingerprint(train_rows, val_rows), str(trainer.precision))
    key = trainer.strategy.broadcast(key)  # every rank uses rank 0's key
    cache, source = module.reference_cache, "the checkpoint"
    if cache is None or cache.key != key:
        cache, source = load_from_disk(key), f"disk ({disk_path(key)})"
    # Computing is collective (each rank a share): every rank must agree to skip it.
    if not trainer.strategy.reduce_boolean_decision(cache is not None, all=True):
        with trainer.precision_plugin.forward_context():
            cache = compute_cache(
                key, train_rows + val_rows, datamodule.collator(), lambda batch: module.reference_logps(batch).token_logps,
                datamodule.batch_size, module.device,
            )
        source = "a reference forward over the data"
        if trainer.is_global_zero:
            save_to_disk(cache)
    log.info("reference log-probs of %d sequences (%d tokens) from %s", len(cache.index), cache.values.numel(), source)
    module.reference_cache = cache
    datamodule.use_reference_cache(cache)
    module.release_reference_copy()  # every row is cached: the copy would only hold memory
    return cache
