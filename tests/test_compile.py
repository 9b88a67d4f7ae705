"""``compile_policy``: the compiled transformer gives the eager losses and gradients, on
batches of different widths (dynamic shapes, one compilation)."""

import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.testing import SAMPLE_ROWS, make_batch, make_policy_module


def test_compiled_policy_matches_eager_forward_and_backward(tiny_tokenizer):
    rows = SAMPLE_ROWS["preference"]
    batches = [make_batch("preference", tiny_tokenizer, rows), make_batch("preference", tiny_tokenizer, rows[1:2])]
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        module = make_policy_module(create_algorithm("dpo"), compile_policy=compiled)
        for i, batch in enumerate(batches):
            module.policy.zero_grad()
            out = module.algorithm.loss(module, batch)
            out.loss.backward()
            grads = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])
            results[compiled, i] = (out.loss.detach(), grads)
        assert (module._compiled is not None) == compiled
    for i in range(2):
        torch.testing.assert_close(results[True, i][0], results[False, i][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(results[True, i][1], results[False, i][1], atol=1e-5, rtol=1e-3)
