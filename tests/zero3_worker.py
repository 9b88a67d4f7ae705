"""Build a DPO ``PolicyModule`` under DeepSpeed ZeRO-3 partitioning, on the CPU, as
Lightning's ``DeepSpeedStrategy(stage=3)`` builds it, and export it; print a JSON report.

Lightning's DeepSpeed strategy runs only on CUDA, but the two steps that matter for a
module holding a frozen reference do not need a GPU: ``configure_model`` inside
``deepspeed.zero.Init`` (Lightning's ``model_sharded_context`` for stage 3) and the
export at the end of ``fit``. One process, gloo. A script, so that DeepSpeed's process
group and global state stay out of the test process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from types import SimpleNamespace


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def main() -> dict:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    import torch
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from transformers import AutoModelForCausalLM

    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_causal_lm
    from lightning_rlhf.modules.policy import PolicyModule
    from lightning_rlhf.modules.sharded import full_weights
    from lightning_rlhf.registry import get_algorithm

    deepspeed.init_distributed(dist_backend="gloo")
    strategy = DeepSpeedStrategy(stage=3)
    strategy.config["train_micro_batch_size_per_gpu"] = 1  # Lightning fills this in from the data loader
    trainer = SimpleNamespace(strategy=strategy, is_global_zero=True)
    plain = load_causal_lm(ModelSettings(name_or_path="builtin:tiny-llama")).state_dict()

    def build(with_trainer: bool) -> PolicyModule:
        module = PolicyModule(ModelSettings(name_or_path="builtin:tiny-llama"), get_algorithm("dpo")(beta=0.1))
        module._trainer = trainer if with_trainer else None  # what configure_model sees of the strategy
        with deepspeed.zero.Init(config_dict_or_path=strategy.config):
            module.configure_model()
        return module

    report: dict = {}
    try:  # what happens without the engine's help
        build(with_trainer=False)
        report["unaware_load"] = "ok"
    except Exception as e:  # noqa: BLE001 - the report names it
        report["unaware_load"] = type(e).__name__

    module = build(with_trainer=True)
    params = dict(module.named_parameters())
    report["partitioned"] = all(hasattr(p, "ds_id") and p.numel() == 0 for p in params.values())
    report["reference_frozen"] = all(not p.requires_grad for p in module.reference_model.parameters())
    report["policy_trainable"] = all(p.requires_grad for p in module.policy.parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        report["policy_max_diff"] = max((p - plain[n]).abs().max().item() for n, p in module.policy.named_parameters())
        report["reference_max_diff"] = max(
            (p - plain[n]).abs().max().item() for n, p in module.reference_model.named_parameters()
        )
    with tempfile.TemporaryDirectory() as directory:
        with full_weights(trainer, module.policy):
            module.save_pretrained(directory)
        exported = AutoModelForCausalLM.from_pretrained(directory).state_dict()
        report["export_max_diff"] = max((exported[n] - v).abs().max().item() for n, v in plain.items())
    return report


if __name__ == "__main__":
    print("REPORT " + json.dumps(main()))
    sys.stdout.flush()
