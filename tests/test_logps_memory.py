"""No ``[batch, time, vocab]`` float32 tensor: the output head runs on completion positions
only, ``logps_chunk_size`` of them at a time, in the forward and in the backward.

A dispatch mode sees every tensor any op produces; the test records the most rows of
vocabulary-wide float32 values that one tensor held. (Equality with the naive
computation, forward and backward, is in test_ops.py.)
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lightning_rlhf import create_algorithm
from lightning_rlhf.testing import make_batch, make_policy_module


class WidestVocabTensor(TorchDispatchMode):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size, self.rows = vocab_size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # e.g. the head's weight transposed: no new memory
            return out
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.ndim >= 2 \
                    and tensor.shape[-1] == self.vocab_size:
                self.rows = max(self.rows, tensor.numel() // self.vocab_size)
        return out


def test_head_sees_at_most_one_chunk_of_completion_positions():
    module = make_policy_module(create_algorithm("sft"), logps_chunk_size=4)
    vocab = module.policy.config.vocab_size
    assert module.policy.config.hidden_size != vocab
    batch = make_batch("preference", module.tokenizer)
    n, t = batch["input_ids"].shape
    completion_positions = int(batch["completion_mask"][:, 1:].sum())
    assert completion_positions > 4 and n * t > 4 * completion_positions / 3

    with WidestVocabTensor(vocab) as chunked:
        module.policy_logps(batch).token_logps.sum().backward()
    assert chunked.rows == 4  # forward, recomputation and backward: one chunk at a time

    with WidestVocabTensor(vocab) as naive:  # the check does see full logits
        module.policy(input_ids=batch["input_ids"]).logits.float().sum().backward()
    assert naive.rows == n * t
