"""The cached reference: computed once, used every epoch, keyed by model, data and precision."""

import json

import lightning as L
import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.data import PreferenceDataModule
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.reference_cache import BATCH_KEY, ReferenceCache, disk_path, sequence_keys
from lightning_rlhf.testing import SAMPLE_ROWS, make_batch

TINY = "builtin:tiny-llama"


def _rows(tag: str, n: int = 6) -> list[dict]:
    return [{"prompt": f"{tag} question {i}?", "chosen": f" answer {i}" * (i % 3 + 1), "rejected": f" no {i}."} for i in range(n)]


class Recorder(L.Callback):
    """Counts reference forwards (outside and inside training steps) and keeps the losses."""

    def __init__(self):
        self.in_step, self.forwards_in_steps, self.forwards_before, self.losses, self.cached_batches = False, 0, 0, [], 0

    def watch(self, module: PolicyModule) -> None:
        original = module._logps

        def counting(model, batch, *args, **kwargs):
            if model is not module.policy:
                if self.in_step:
                    self.forwards_in_steps += 1
                else:
                    self.forwards_before += 1
            return original(model, batch, *args, **kwargs)

        module._logps = counting

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.in_step = True
        self.cached_batches += BATCH_KEY in batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.in_step = False
        self.losses.append(outputs["loss"].item())


def _fit(tmp_path, rows, epochs=2, cache=True, reference=None, ckpt_path=None, checkpoint=False, **module_args):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    module = PolicyModule(ModelSettings(TINY), create_algorithm("dpo"), reference=reference,
                          cache_reference_logps=cache, **module_args)
    module.optimizer_settings.learning_rate = 1e-2
    recorder = Recorder()
    recorder.watch(module)
    data = PreferenceDataModule(path=str(path), batch_size=2, max_length=64)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=checkpoint, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[recorder])
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, recorder, trainer


def test_cache_is_used_every_epoch_and_gives_the_same_losses(tmp_path):
    module, cached, _ = _fit(tmp_path, _rows("same"), epochs=2)
    assert cached.forwards_before == 3  # 6 pairs, batches of 2: one reference pass over the data
    assert cached.forwards_in_steps == 0 and cached.cached_batches == 6  # both epochs read the cache
    assert module.reference_model is None  # the copy is released once every row is cached
    assert module.reference_cache is not None and len(module.reference_cache.index) == 12

    _, inline, _ = _fit(tmp_path, _rows("same"), epochs=2, cache=False)
    assert inline.forwards_before == 0 and inline.forwards_in_steps == 6
    assert cached.losses == pytest.approx(inline.losses, abs=1e-5)
    assert cached.losses[0] != pytest.approx(cached.losses[-1], abs=1e-3)  # it trained


def test_a_changed_model_or_data_set_is_never_served_a_stale_cache(tmp_path):
    rows = _rows("key")
    original, first, _ = _fit(tmp_path, rows, epochs=1)
    assert first.forwards_before == 3
    _, again, _ = _fit(tmp_path, rows, epochs=1)  # same model, data, precision: read from disk
    assert again.forwards_before == 0 and again.forwards_in_steps == 0

    changed = [dict(r) for r in rows]
    changed[4]["rejected"] = " something else."
    _, data_changed, _ = _fit(tmp_path, changed, epochs=1)
    assert data_changed.forwards_before == 3

    # Another reference model (same shapes, other weights): recomputed, and the values differ.
    other = tmp_path / "other-reference"
    from lightning_rlhf.models.builtin import resolve
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve(TINY))
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(other)
    module, model_changed, _ = _fit(tmp_path, rows, epochs=1, reference=ModelSettings(str(other), tokenizer=TINY))
    assert model_changed.forwards_before == 3
    assert module.reference_cache.key != original.reference_cache.key


def test_resume_reuses_the_cache_in_the_checkpoint(tmp_path):
    rows = _rows("resume")
    module, first, trainer = _fit(tmp_path, rows, epochs=1, checkpoint=True)
    checkpoint = trainer.checkpoint_callback.best_model_path
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["reference_cache"]["key"] == module.reference_cache.key
    disk_path(module.reference_cache.key).unlink()  # only the checkpoint has it now
    resumed, recorder, _ = _fit(tmp_path, rows, epochs=2, ckpt_path=checkpoint)
    assert recorder.forwards_before == 0 and recorder.forwards_in_steps == 0
    assert recorder.cached_batches == 3  # the second epoch


def test_lookup_misses_rows_it_has_not_seen(tiny_tokenizer):
    batch = make_batch("preference", tiny_tokenizer)
    keys = sequence_keys(batch)
    counts = batch["completion_mask"][:, 1:].sum(-1).tolist()
    values = torch.arange(sum(counts), dtype=torch.float32)
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    cache = ReferenceCache("k", {k: (o, c) for k, o, c in zip(keys, offsets, counts)}, values)
    out = cache.lookup(batch)
    mask = batch["completion_mask"][:, 1:]
    assert torch.equal(out[mask], values) and torch.all(out[~mask] == 0)
    restored = ReferenceCache.from_state_dict(cache.state_dict())
    assert torch.equal(restored.lookup(batch), out)
    other = make_batch("preference", tiny_tokenizer, [dict(SAMPLE_ROWS["preference"][0], chosen=" It was fine.")])
    assert cache.lookup(other) is None


def test_a_second_fit_of_the_same_module_fingerprints_the_reference_not_the_trained_policy(tmp_path):
    rows = _rows("twice")
    module, _, trainer = _fit(tmp_path, rows, epochs=1)
    assert module.reference_model is None  # released
    key, values = module.reference_cache.key, module.reference_cache.values.clone()
    disk_path(key).unlink()  # make the second fit compute it again
    module.reference_cache = None
    data = PreferenceDataModule(path=str(tmp_path / "pairs.jsonl"), batch_size=2, max_length=64)
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(module, data)
    assert module.reference_cache.key == key
    torch.testing.assert_close(module.reference_cache.values, values)
