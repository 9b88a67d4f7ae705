"""The training step never waits for the accelerator: no op in the forward and backward of
any offline plugin's loss reads a tensor's value on the host.

Such a read is what makes the host wait for the device (on a GPU, a
``cudaStreamSynchronize``): ``.item()``, ``bool(t)``, ``int(t)`` and ``if t:`` go through
``aten._local_scalar_dense``; ``nonzero``, boolean-mask indexing and ``masked_select`` have
data-dependent output sizes and sync too. A dispatch mode sees every op, on the CPU as
on a GPU, so the test runs here.

One read is not ours: a Hugging Face causal LM called without an attention mask checks
its position ids for packed sequences (``masking_utils.find_packed_sequence_indices``)
with a host read, once per forward. With a padding mask it would read twice
(``_ignore_causal_mask_sdpa``), which is why ``PolicyModule`` passes none (its batches are
right-padded, so the mask changes nothing the loss reads). The test attributes every
read to the innermost frame outside torch and allows only that one.
"""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_rlhf.registry import list_algorithms
from lightning_rlhf.testing import make_batch, make_policy_module

SYNCING = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten._unique2.default,
}


class SyncCounter(TorchDispatchMode):
    """Records each host read as ``"<op> at <file>:<function>"`` of the innermost caller outside torch."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        if func in SYNCING or bool_index:
            caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            self.syncs.append(f"{func} at {caller.filename.rsplit('site-packages/', 1)[-1]}:{caller.name}")
        return func(*args, **kwargs)

    def ours(self) -> list[str]:
        return [s for s in self.syncs if not s.endswith("transformers/masking_utils.py:find_packed_sequence_indices")]


OFFLINE = sorted(
    name for name, cls in list_algorithms().items()
    if cls.stage == "policy" and cls.data != "prompt"
)


@pytest.mark.parametrize("name", OFFLINE)
def test_loss_forward_and_backward_do_not_sync(name, tiny_tokenizer):
    from lightning_rlhf.registry import create_algorithm

    algorithm = create_algorithm(name)
    module = make_policy_module(algorithm)
    batch = make_batch(algorithm.data, module.tokenizer)
    algorithm.loss(module, batch)  # a plugin may check its data once, on the first batch
    forwards = []
    module.policy.model.register_forward_hook(lambda *args: forwards.append(1))
    if module.reference_model is not None:
        module.reference_model.model.register_forward_hook(lambda *args: forwards.append(1))
    with SyncCounter() as counter:
        out = algorithm.loss(module, batch)
        out.loss.backward()
    assert counter.ours() == [], f"{name}: host reads inside the step: {counter.ours()}"
    assert len(counter.syncs) <= len(forwards)  # transformers' packed-sequence check, once per forward


def test_the_counter_sees_a_sync():
    with SyncCounter() as counter:
        torch.ones(3).sum().item()
        torch.arange(4)[torch.tensor([True, False, True, False])]
    assert len(counter.ours()) == 2 and all("test_step_sync.py:test_the_counter_sees_a_sync" in s for s in counter.syncs)


def test_shared_prompt_layout_does_not_sync_at_all():
    """With a 4D mask transformers uses it as given: not even the packed-sequence check."""
    from lightning_rlhf.data.collate import PreferenceCollator
    from lightning_rlhf.registry import create_algorithm

    module = make_policy_module(create_algorithm("dpo"))
    rows = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12]},
            {"prompt_ids": [14], "chosen_ids": [15, 16, 17], "rejected_ids": [20]}]
    batch = PreferenceCollator(0, share_prompt=True)(rows)
    with SyncCounter() as counter:
        module.algorithm.loss(module, batch).loss.backward()
    assert counter.syncs == []
