"""Multi-GPU recipes build their strategies, and under them the frozen reference stays
frozen: never in the optimiser, never with a gradient, sharded with the policy.

FSDP and Lightning's DeepSpeed strategy run only on CUDA, so what is checked here on the
CPU is everything short of launching: each recipe's strategy object; FSDP's choice of
units, applied to a real module with a frozen reference; and, with DeepSpeed installed,
``configure_model`` under ZeRO-3 partitioning (as Lightning calls it for stage 3) and the
export of partitioned weights (``tests/zero3_worker.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, StrategyRegistry

from lightning_rlhf.algorithm import OnlineAlgorithm
from lightning_rlhf.models.config import LoraSettings, ModelSettings
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.modules.sharded import check_strategy
from lightning_rlhf.registry import create_algorithm_from_spec, get_algorithm
from tests.test_recipes import RECIPES, ParseOnlyCLI

ROOT = Path(__file__).resolve().parents[1]


def recipe_config(recipe: str):
    return ParseOnlyCLI(args=["--config", recipe], run=False).config


def build_strategy(spec):
    """The strategy a recipe's ``trainer.strategy`` names, built without a Trainer."""
    if isinstance(spec, str):
        return StrategyRegistry.get(spec)
    return instantiate_class((), spec.as_dict() if hasattr(spec, "as_dict") else spec)


MULTI_DEVICE = [r for r in RECIPES if (yaml.safe_load(Path(r).read_text())["trainer"].get("strategy") or "auto") != "auto"]


def is_deepspeed(spec) -> bool:
    return "DeepSpeed" in str(getattr(spec, "class_path", spec))


def test_there_are_fsdp_deepspeed_and_multi_node_recipes():
    specs = [recipe_config(r).trainer.strategy for r in MULTI_DEVICE]
    # DeepSpeed is an optional extra: its strategy is built in the next test when installed
    kinds = {type(build_strategy(spec)).__name__ for spec in specs if not is_deepspeed(spec)}
    assert {"FSDPStrategy", "DDPStrategy"} <= kinds
    assert any(is_deepspeed(spec) for spec in specs)
    assert any(recipe_config(r).trainer.num_nodes > 1 for r in MULTI_DEVICE)
    assert any("deepspeed" in r for r in MULTI_DEVICE)


@pytest.mark.parametrize("recipe", MULTI_DEVICE)
def test_multi_device_recipe_builds_its_strategy(recipe):
    config = recipe_config(recipe)
    spec = config.trainer.strategy
    if is_deepspeed(spec):
        pytest.importorskip("deepspeed")
    strategy = build_strategy(spec)
    init = config.model.init_args
    online = isinstance(create_algorithm_from_spec(init.algorithm.as_dict()), OnlineAlgorithm)
    check_strategy(strategy, online=online, export_dir=init.get("export_dir"))  # the module's setup runs this
    assert config.trainer.devices == 8 and config.trainer.accelerator == "gpu"
    if isinstance(strategy, FSDPStrategy):
        assert strategy.kwargs["use_orig_params"] is True
        assert type(strategy.kwargs["auto_wrap_policy"]).__name__ == "ModuleWrapPolicy"
    if isinstance(strategy, DeepSpeedStrategy):
        assert strategy.config["zero_optimization"]["stage"] == spec.init_args.stage
        assert not online  # ZeRO-3 generation would gather every layer for every token


def test_fsdp_units_keep_the_frozen_reference_apart():
    """The DPO FSDP recipe's wrap policy on a DPO module of tiny-llama (a Llama too): every
    decoder layer, the reference's included, is a unit of its own, all trainable or all
    frozen; the root unit keeps both models' embeddings and heads, which mixes trainable
    and frozen parameters: what use_orig_params=True is for."""
    strategy = build_strategy(recipe_config("recipes/dpo/llama3.1-8b-fsdp.yaml").trainer.strategy)
    module = PolicyModule(ModelSettings(name_or_path="builtin:tiny-llama"), get_algorithm("dpo")(beta=0.1))
    module.configure_model()
    # _run_policy is what FSDP itself calls to choose its units.
    units = strategy.kwargs["auto_wrap_policy"]._run_policy(module, set(), {})
    layers = [u for u in units if u is not module]
    reference_layers = list(module.reference_model.model.layers)
    policy_layers = list(module.policy.model.layers)
    assert set(layers) == set(reference_layers) | set(policy_layers)
    assert all(not p.requires_grad for layer in reference_layers for p in layer.parameters())
    assert all(p.requires_grad for layer in policy_layers for p in layer.parameters())
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    root = [p for p in module.parameters() if id(p) not in in_layers]
    assert {p.requires_grad for p in root} == {True, False}
    assert strategy.kwargs["use_orig_params"] is True


def test_check_strategy_refuses_what_fsdp_cannot_do():
    fsdp = FSDPStrategy(auto_wrap_policy={torch.nn.Linear})
    check_strategy(fsdp)  # offline, no export: fine
    with pytest.raises(ValueError, match="use_orig_params"):
        check_strategy(FSDPStrategy(use_orig_params=False))
    with pytest.raises(ValueError, match="online algorithms"):
        check_strategy(fsdp, online=True)
    with pytest.raises(ValueError, match="lightning-rlhf export"):
        check_strategy(fsdp, export_dir="runs/x")
    check_strategy(DDPStrategy(), online=True, export_dir="runs/x")


@pytest.mark.parametrize("lora", [False, True], ids=["frozen-copy", "adapters-off"])
def test_reference_never_trains(tmp_path, lora):
    """A real fit (2 steps at a high learning rate): the optimiser holds exactly the
    policy's trainable parameters, and the reference's weights are where they started."""
    settings = ModelSettings(name_or_path="builtin:tiny-llama", lora=LoraSettings(r=4, alpha=8) if lora else None)
    module = PolicyModule(settings, get_algorithm("dpo")(beta=0.1))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join((ROOT / "recipes/data/tiny_preferences.jsonl").read_text().splitlines(True)[:8]))
    from lightning_rlhf.data import PreferenceDataModule

    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    module.configure_model()
    # Held here: the module may let go of its reference once it has cached its log-probs.
    reference_model = module.reference_model
    if lora:
        base = {n: p.detach().clone() for n, p in module.policy.named_parameters() if "lora_" not in n}
    else:
        reference = {n: p.detach().clone() for n, p in reference_model.named_parameters()}
    start = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer.fit(module, datamodule=PreferenceDataModule(path=str(data), batch_size=4, max_length=48))

    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    trainable = {id(p) for p in module.policy.parameters() if p.requires_grad}
    assert optimised == trainable
    moved = [n for n, p in module.policy.named_parameters() if p.requires_grad and not torch.equal(p, start[n])]
    assert moved  # it trained
    if lora:  # the reference is the base weights with the adapters off: they must not move
        assert all("lora_" in n for n, p in module.policy.named_parameters() if p.requires_grad)
        assert all(torch.equal(p, base[n]) for n, p in module.policy.named_parameters() if n in base)
    else:
        assert not optimised & {id(p) for p in reference_model.parameters()}
        for name, p in reference_model.named_parameters():
            assert not p.requires_grad and p.grad is None and torch.equal(p, reference[name]), name
        assert not reference_model.training


def test_zero3_partitions_policy_and_reference_and_exports_full_weights():
    """Measured on this CPU (tests/zero3_worker.py): without the engine's help,
    transformers' from_pretrained inside zero.Init fails (IndexError in _init_weights)."""
    pytest.importorskip("deepspeed")
    done = subprocess.run(
        [sys.executable, "tests/zero3_worker.py"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert report["unaware_load"] != "ok"  # what loading_into_shards is for
    assert report["partitioned"]  # policy and reference: every parameter partitioned
    assert report["reference_frozen"] and report["policy_trainable"]
    assert report["policy_max_diff"] == report["reference_max_diff"] == 0.0  # the checkpoint's weights, gathered
    assert report["export_max_diff"] == 0.0  # the export holds the full weights, not empty partitions


def _deepspeed_strategy(stage: int) -> DeepSpeedStrategy:
    # Built without __init__, which needs the deepspeed package (a GPU extra): the check
    # reads only the strategy's type and its ZeRO stage.
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    strategy.config = {"zero_optimization": {"stage": stage}}
    return strategy


def test_check_strategy_refuses_zero3_for_online_algorithms():
    zero3 = _deepspeed_strategy(3)
    assert zero3.zero_stage_3
    check_strategy(zero3)  # offline: fine
    with pytest.raises(ValueError, match="under DeepSpeed ZeRO-3 every new token would gather every layer"):
        check_strategy(zero3, online=True)
    check_strategy(_deepspeed_strategy(2), online=True)
