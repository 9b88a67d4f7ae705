"""RewardModule: where the reward is read, metrics, LoRA export, checkpoints, the export command."""

import lightning as L
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lightning_rlhf import RewardModule
from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.models.config import LoraSettings, ModelSettings
from lightning_rlhf.models.reward_head import last_token_index, sequence_rewards
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.modules.reward_metrics import RewardMetrics
from lightning_rlhf.rewards import RewardModelSource
from lightning_rlhf.testing import TINY_MODEL, make_batch
from lightning_rlhf.testing.reward import make_reward_module
from lightning_rlhf_plugins.bradley_terry import BradleyTerry
from lightning_rlhf_plugins.dpo import DPO

TEXTS = [("How was the film?", " Lovely."), ("Q", " A much longer answer, to force padding on the others.")]


def encode(tokenizer, prompt, completion):
    return tokenizer(prompt)["input_ids"] + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return make_reward_module(BradleyTerry()).eval()


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_reward_does_not_depend_on_padding(module):
    short, long = (encode(module.tokenizer, p, c) for p, c in TEXTS)
    alone = pad_sequences([([], short)], module.tokenizer.pad_token_id)
    together = pad_sequences([([], short), ([], long)], module.tokenizer.pad_token_id, pad_to_multiple_of=64)
    assert together["input_ids"].shape[1] == 64 > len(short)
    with torch.no_grad():
        r_alone = module.rewards(alone)
        r_together = module.rewards(together)
    torch.testing.assert_close(r_together[0], r_alone[0], atol=1e-5, rtol=1e-5)


def test_reward_read_at_last_token_even_when_pad_is_eos(module):
    """With pad == EOS, transformers' pooling (last token that is not the pad id) skips the
    completion's EOS; reading the last attended token does not."""
    eos = module.tokenizer.eos_token_id
    short, long = (encode(module.tokenizer, p, c) for p, c in TEXTS)
    batch = pad_sequences([([], short), ([], long)], pad_token_id=eos)
    hf_model = module.reward_model
    with torch.no_grad():
        ours = sequence_rewards(hf_model, batch["input_ids"], batch["attention_mask"])
        alone = sequence_rewards(hf_model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
        hf_model.config.pad_token_id = eos
        try:
            pooled_by_pad_id = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        finally:
            hf_model.config.pad_token_id = module.tokenizer.pad_token_id
    torch.testing.assert_close(ours[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pooled_by_pad_id[0], alone[0], atol=1e-4)


def test_pad_token_id_in_config(module):
    assert module.reward_model.config.pad_token_id == module.tokenizer.pad_token_id
    assert module.reward_model.config.num_labels == 1


def test_policy_stage_plugins_are_refused():
    with pytest.raises(ValueError, match="policy-stage objective"):
        RewardModule(ModelSettings(TINY_MODEL), DPO())


def test_metrics_by_hand():
    """Preference batch, rewards chosen [2, 0], rejected [1, 1]: differences [1, -1].
    Ranking batch, one prompt, rewards [3, 1, 2] best first: differences 2, 1, -1."""
    metrics = RewardMetrics()
    metrics.update({}, torch.tensor([2.0, 0.0, 1.0, 1.0]))
    assert metrics.accuracy.compute().item() == pytest.approx(0.5)
    assert metrics.margin.compute().item() == pytest.approx(0.0)
    ranking = {"group_index": torch.tensor([0, 0, 0]), "rank": torch.tensor([0, 1, 2])}
    metrics.update(ranking, torch.tensor([3.0, 1.0, 2.0]))
    # Over the 5 pairs seen: correct 1 + 0 + 1 + 1 + 0 = 3; margins 1 - 1 + 2 + 1 - 1 = 2.
    assert metrics.accuracy.compute().item() == pytest.approx(3 / 5)
    assert metrics.margin.compute().item() == pytest.approx(2 / 5)
    # Rewards seen: [2, 0, 1, 1, 3, 1, 2]: mean 10/7, population std sqrt(20/7 - (10/7)^2).
    assert metrics.reward_mean.compute().item() == pytest.approx(10 / 7)
    assert metrics.reward_std.compute().item() == pytest.approx((20 / 7 - (10 / 7) ** 2) ** 0.5)
    for _, metric in metrics.items():
        metric.reset()
    metrics.update({}, torch.tensor([1.0, 0.0]))
    assert metrics.accuracy.compute().item() == 1.0


def _train_one_step(module, rows=None):
    batch = make_batch("preference", module.tokenizer, rows)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0)
    module.algorithm.loss(module, batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return module.eval()


def test_lora_score_head_survives_export(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    module = RewardModule(ModelSettings(TINY_MODEL, lora=LoraSettings(r=4, alpha=8, dropout=0.0)), BradleyTerry())
    module.configure_model()
    head_before = module.reward_model.base_model.model.score.modules_to_save["default"].weight.clone()
    _train_one_step(module)
    trained_head = module.reward_model.base_model.model.score.modules_to_save["default"].weight
    assert not torch.equal(trained_head, head_before), "the score head was not trained"
    ids = [encode(module.tokenizer, p, c) for p, c in TEXTS]
    with torch.no_grad():
        expected = torch.stack([module.rewards(pad_sequences([([], x)], module.tokenizer.pad_token_id))[0] for x in ids])

    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    module.save_pretrained(merged_dir)
    module.save_pretrained(adapter_dir, merged=False)
    assert (adapter_dir / "adapter_config.json").exists() and not (merged_dir / "adapter_config.json").exists()

    # transformers alone, its own forward and pooling, one unpadded sequence at a time
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        by_transformers = torch.stack([merged(input_ids=torch.tensor([x])).logits[0, 0] for x in ids])
    torch.testing.assert_close(by_transformers, expected, atol=1e-5, rtol=1e-5)

    # peft: the base model with a one-output head, then the adapter (LoRA + trained head)
    base = AutoModelForSequenceClassification.from_pretrained(module.reward_model.peft_config["default"].base_model_name_or_path, num_labels=1)
    adapted = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        by_peft = torch.stack([adapted(input_ids=torch.tensor([x])).logits[0, 0] for x in ids])
    torch.testing.assert_close(by_peft, expected, atol=1e-5, rtol=1e-5)

    # and the reward source, from either export, batched with padding
    prompts, completions = zip(*TEXTS)
    for directory in (merged_dir, adapter_dir):
        torch.testing.assert_close(RewardModelSource(str(directory), device="cpu")(prompts, completions), expected, atol=1e-5, rtol=1e-5)


def test_fit_checkpoint_metrics_and_export_command(tmp_path):
    from lightning_rlhf.commands.export import export
    from lightning_rlhf.data import PreferenceDataModule

    torch.manual_seed(0)
    module = RewardModule(
        ModelSettings(TINY_MODEL), BradleyTerry(), optimizer=OptimizerSettings(learning_rate=1e-3)
    )
    data = PreferenceDataModule(path="recipes/data/tiny_preferences.jsonl", batch_size=16, max_length=64, val_fraction=0.25)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path, limit_val_batches=1,
    )
    trainer.fit(module, datamodule=data)
    for name in ("train/loss", "train/accuracy_step", "train/accuracy_epoch", "train/margin_epoch",
                 "train/reward_mean_epoch", "train/reward_std_epoch", "train/rewards/chosen",
                 "val/loss", "val/accuracy", "val/margin", "val/reward_mean", "val/reward_std"):
        assert name in trainer.callback_metrics, f"{name} not logged; logged: {sorted(trainer.callback_metrics)}"

    # val/accuracy is the share of held-out pairs the model orders correctly
    val_batch = next(iter(data.val_dataloader()))
    module.eval()
    with torch.no_grad():
        chosen, rejected = module.rewards(val_batch).chunk(2)
    assert trainer.callback_metrics["val/accuracy"].item() == pytest.approx((chosen > rejected).float().mean().item())

    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    reloaded = RewardModule.from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.rewards(val_batch), module.rewards(val_batch))

    assert export([str(checkpoint), str(tmp_path / "export")]) == 0
    source = RewardModelSource(str(tmp_path / "export"), device="cpu")
    prompts, completions = zip(*TEXTS)
    ids = [encode(module.tokenizer, p, c) for p, c in TEXTS]
    with torch.no_grad():
        direct = torch.stack([module.rewards(pad_sequences([([], x)], module.tokenizer.pad_token_id))[0] for x in ids])
    torch.testing.assert_close(source(prompts, completions), direct, atol=1e-5, rtol=1e-5)


def test_fit_on_ranking_data(tmp_path):
    from lightning_rlhf.data import RankingDataModule
    from lightning_rlhf_plugins.ranking import Ranking

    torch.manual_seed(0)
    module = RewardModule(ModelSettings(TINY_MODEL), Ranking(), optimizer=OptimizerSettings(learning_rate=1e-3))
    data = RankingDataModule(path="recipes/data/tiny_rankings.jsonl", batch_size=4, max_length=64, val_fraction=0.25)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert {"train/accuracy_epoch", "val/accuracy", "train/pairs_per_prompt"} <= set(trainer.callback_metrics)


def test_data_kind_mismatch_is_refused(tmp_path):
    from lightning_rlhf.data import RankingDataModule

    module = RewardModule(ModelSettings(TINY_MODEL), BradleyTerry())
    data = RankingDataModule(path="recipes/data/tiny_rankings.jsonl", batch_size=4, max_length=64)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="reads 'preference' data"):
        trainer.fit(module, datamodule=data)


def test_qlora_reward_step_trains_the_head_and_adapters():
    module = RewardModule(ModelSettings(TINY_MODEL, lora=LoraSettings(r=4, alpha=8), load_in_4bit=True), BradleyTerry())
    module.configure_model()
    assert any(type(m).__name__ == "Linear4bit" for m in module.reward_model.modules())
    trainable = {n: p for n, p in module.reward_model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    out = module.algorithm.loss(module, make_batch("preference", module.tokenizer))
    out.loss.backward()
    optimizer.step()
    changed = {n for n, p in trainable.items() if not torch.equal(before[n], p)}
    assert any("score" in n for n in changed) and any("lora_" in n for n in changed)
