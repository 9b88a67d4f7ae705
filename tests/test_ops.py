import torch

from lightning_rlhf.ops import completion_index, masked_mean, masked_whiten, naive_logps, selective_logps


def test_selective_logps_matches_naive_forward_and_backward():
    torch.manual_seed(0)
    n, t, h, v = 3, 7, 8, 11
    head = torch.nn.Linear(h, v, bias=False)
    hidden = torch.randn(n, t, h, requires_grad=True)
    input_ids = torch.randint(0, v, (n, t))
    completion_mask = torch.zeros(n, t, dtype=torch.bool)
    completion_mask[0, 3:] = True
    completion_mask[1, 5:6] = True
    completion_mask[2, 1:4] = True

    fast = selective_logps(hidden, input_ids, completion_index(completion_mask), head, chunk_size=2)
    slow = naive_logps(head(hidden), input_ids, completion_mask)
    torch.testing.assert_close(fast, slow)

    weights = torch.randn(n, t - 1)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), hidden)
    (grad_slow,) = torch.autograd.grad((slow * weights).sum(), hidden)
    torch.testing.assert_close(grad_fast, grad_slow)
    (head_fast,) = torch.autograd.grad((selective_logps(hidden, input_ids, completion_index(completion_mask), head, 4) * weights).sum(), head.weight)
    (head_slow,) = torch.autograd.grad((naive_logps(head(hidden), input_ids, completion_mask) * weights).sum(), head.weight)
    torch.testing.assert_close(head_fast, head_slow)


def test_selective_logps_softcap():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5, bias=False)
    hidden, ids = torch.randn(1, 4, 4), torch.randint(0, 5, (1, 4))
    mask = torch.ones(1, 4, dtype=torch.bool)
    capped = 2.0 * torch.tanh(head(hidden) / 2.0)
    torch.testing.assert_close(
        selective_logps(hidden, ids, completion_index(mask), head, logit_softcap=2.0), naive_logps(capped, ids, mask)
    )


def test_masked_mean_and_whiten():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    assert masked_mean(values, mask).item() == 2.0
    white = masked_whiten(values, mask)
    # mean 2, unbiased variance 1 -> (-1, 0, 1), and the masked entry is zeroed
    torch.testing.assert_close(white, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
