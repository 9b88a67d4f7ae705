import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.models.config import LoraSettings, ModelSettings
from lightning_rlhf.models.loading import load_causal_lm
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.ops import naive_logps
from lightning_rlhf.testing import make_batch

TINY = "builtin:tiny-llama"


def test_sft_loss_is_nll_on_completion_tokens_only():
    module = PolicyModule(ModelSettings(TINY), create_algorithm("sft"))
    module.configure_model()
    batch = make_batch("sft", module.tokenizer)
    out = module.algorithm.loss(module, batch)
    logits = module.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = naive_logps(logits, batch["input_ids"], batch["completion_mask"])
    expected = -token_logps.sum() / batch["completion_mask"][:, 1:].sum()
    torch.testing.assert_close(out.loss, expected)


def test_policy_logps_is_one_forward_for_chosen_and_rejected():
    module = PolicyModule(ModelSettings(TINY), create_algorithm("dpo"))
    module.configure_model()
    calls = []
    module.policy.model.register_forward_hook(lambda mod, args, kwargs_out: calls.append(1))
    batch = make_batch("preference", module.tokenizer)
    module.policy_logps(batch)
    assert len(calls) == 1


def test_reference_is_frozen_copy_without_lora():
    module = PolicyModule(ModelSettings(TINY), create_algorithm("dpo"))
    module.configure_model()
    assert module.reference_model is not None
    assert not any(p.requires_grad for p in module.reference_model.parameters())


def test_no_reference_model_when_the_plugin_needs_none():
    module = PolicyModule(ModelSettings(TINY), create_algorithm("sft"))
    module.configure_model()
    assert module.reference_model is None


def test_lora_reference_is_adapter_disabled_policy_and_base_weights_stay(tmp_path):
    import lightning as L

    from lightning_rlhf.data import PreferenceDataModule

    settings = ModelSettings(TINY, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    module = PolicyModule(settings, create_algorithm("dpo"))
    module.configure_model()
    assert module.reference_model is None  # no second copy in memory
    base_before = {k: v.clone() for k, v in module.policy.get_base_model().state_dict().items() if "lora_" not in k}

    data = PreferenceDataModule(path="recipes/data/tiny_preferences.jsonl", batch_size=8, max_length=64)
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    module.optimizer_settings.learning_rate = 1e-2
    trainer.fit(module, data)

    base_after = {k: v for k, v in module.policy.get_base_model().state_dict().items() if "lora_" not in k}
    for key, value in base_before.items():
        torch.testing.assert_close(base_after[key], value, msg=key)
    batch = make_batch("preference", module.tokenizer)
    fresh_base = load_causal_lm(ModelSettings(TINY), trainable=False)
    reference = module.reference_logps(batch)
    expected = naive_logps(fresh_base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                           batch["input_ids"], batch["completion_mask"])
    torch.testing.assert_close(reference.token_logps, expected)
    # ... and the trained policy has moved away from it
    assert not torch.allclose(module.policy_logps(batch).token_logps, reference.token_logps)


def test_qlora_dpo_step_runs_on_cpu():
    settings = ModelSettings(TINY, lora=LoraSettings(r=4, alpha=8), load_in_4bit=True)
    module = PolicyModule(settings, create_algorithm("dpo"))
    module.configure_model()
    assert any(type(m).__name__ == "Linear4bit" for m in module.policy.modules())
    params = [p for p in module.policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    out = module.algorithm.loss(module, make_batch("preference", module.tokenizer))
    out.loss.backward()
    opt.step()
    assert torch.isfinite(out.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, params))


def test_export_merged_and_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module = PolicyModule(ModelSettings(TINY, lora=LoraSettings(r=4, alpha=8, dropout=0.0)), create_algorithm("sft"))
    module.configure_model()
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # make the adapter non-trivial
    batch = make_batch("sft", module.tokenizer)
    expected = module.policy_logps(batch).token_logps

    merged = AutoModelForCausalLM.from_pretrained(module.save_pretrained(tmp_path / "merged", merged=True))
    got = naive_logps(merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                      batch["input_ids"], batch["completion_mask"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    module.save_pretrained(tmp_path / "adapter", merged=False)
    base = load_causal_lm(ModelSettings(TINY), trainable=False)
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter")
    got = naive_logps(adapted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                      batch["input_ids"], batch["completion_mask"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_the_offline_module_has_no_online_settings():
    import inspect

    from lightning_rlhf.modules.online_policy import OnlinePolicyModule

    offline = set(inspect.signature(PolicyModule.__init__).parameters)
    assert not offline & {"critic", "online"}
    assert {"critic", "online"} <= set(inspect.signature(OnlinePolicyModule.__init__).parameters)
    module = PolicyModule(ModelSettings(TINY), create_algorithm("dpo"))
    assert module.automatic_optimization and not hasattr(module, "is_online") and not hasattr(module, "values")


def test_an_online_algorithm_on_policy_module_gets_the_online_module():
    """Code written before the split (``PolicyModule(policy, grpo, online=...)``) keeps working,
    and a checkpoint's hyperparameters come back as the module that wrote them."""
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule

    module = PolicyModule(ModelSettings(TINY), create_algorithm("grpo"), online=OnlineSettings(micro_batch_size=2))
    assert type(module) is OnlinePolicyModule and module.online_settings.micro_batch_size == 2
    assert not module.automatic_optimization
    assert type(PolicyModule.from_hparams(dict(module.hparams))) is OnlinePolicyModule
    with pytest.raises(TypeError, match="is not online: train it with lightning_rlhf.PolicyModule"):
        OnlinePolicyModule(ModelSettings(TINY), create_algorithm("dpo"))


def test_an_old_online_recipe_naming_policy_module_trains_online(tmp_path):
    """A recipe that names ``lightning_rlhf.PolicyModule`` for PPO (with ``critic`` and
    ``online`` keys the offline module does not take) gets the online module, and a warning."""
    from pathlib import Path

    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.training_cli import RLHFCLI

    recipe = tmp_path / "ppo.yaml"
    recipe.write_text(Path("recipes/ppo/tiny.yaml").read_text().replace("lightning_rlhf.OnlinePolicyModule", "lightning_rlhf.PolicyModule"))
    with pytest.warns(FutureWarning, match="lightning_rlhf.OnlinePolicyModule trains it"):
        cli = RLHFCLI(args=["--config", str(recipe), "--trainer.logger", "false"], run=False)
    assert type(cli.model) is OnlinePolicyModule


def test_an_old_self_training_recipe_keeps_its_grow_batch(tmp_path):
    """Before the split, a self-training recipe set ``online: {generation_batch_size: N}``;
    it still parses, with a warning, and the batch reaches PolicyModule."""
    from pathlib import Path

    from lightning_rlhf.training_cli import RLHFCLI

    recipe = tmp_path / "rest.yaml"
    text = Path("recipes/rest/toyworld.yaml").read_text()
    assert "    generation_batch_size: 256" in text
    recipe.write_text(text.replace("    generation_batch_size: 256", "    online: {generation_batch_size: 96}"))
    class ParseOnly(RLHFCLI):  # the toy world's model and data are not built here
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    with pytest.warns(FutureWarning, match="online.generation_batch_size is now model.init_args.generation_batch_size"):
        cli = ParseOnly(args=["--config", str(recipe)], run=False)
    assert cli.config.model.init_args.generation_batch_size == 96
