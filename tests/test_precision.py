"""bf16 mixed precision on the CPU: matrix products in bf16, log-probs and loss in fp32."""

import lightning as L
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.policy import PolicyModule


class DtypeProbe(L.Callback):
    def __init__(self):
        self.linear_outputs, self.logps, self.losses, self.weights = set(), set(), set(), set()

    def watch(self, module: PolicyModule) -> None:
        original = module._logps

        def probed(model, batch, *args, **kwargs):
            out = original(model, batch, *args, **kwargs)
            self.logps.add(out.token_logps.dtype)
            return out

        module._logps = probed

    def on_train_start(self, trainer, module):
        module.policy.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda mod, args, output: self.linear_outputs.add(output.dtype)
        )
        self.weights.update(p.dtype for p in module.policy.parameters())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.add(outputs["loss"].dtype)


def _fit(tmp_path, precision: str) -> DtypeProbe:
    module = PolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("dpo"), cache_reference_logps=False)
    probe = DtypeProbe()
    probe.watch(module)
    from lightning_rlhf.data import PreferenceDataModule

    data = PreferenceDataModule(path="recipes/data/tiny_preferences.jsonl", batch_size=4, max_length=64)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, precision=precision, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe])
    trainer.fit(module, data)
    return probe


def test_bf16_mixed_on_cpu_multiplies_in_bf16_and_keeps_logps_and_loss_in_fp32(tmp_path):
    probe = _fit(tmp_path, "bf16-mixed")
    assert probe.weights == {torch.float32}  # fp32 master weights, cast per matrix product
    assert probe.linear_outputs == {torch.bfloat16}
    assert probe.logps == {torch.float32} and probe.losses == {torch.float32}


def test_bf16_true_on_cpu_holds_bf16_weights_and_keeps_logps_in_fp32(tmp_path):
    probe = _fit(tmp_path, "bf16-true")
    assert probe.weights == {torch.bfloat16}
    assert probe.linear_outputs == {torch.bfloat16}
    assert probe.logps == {torch.float32} and probe.losses == {torch.float32}
