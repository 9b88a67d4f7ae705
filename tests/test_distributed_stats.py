"""PPO's rollout statistics under data parallelism: whitening, score moments and the KL
controller's input computed over every process's rows, so that 2 processes (gloo, real)
holding halves of a rollout get what one process holding all of it gets."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_rlhf.ops import masked_whiten
from lightning_rlhf_plugins.ppo import RunningMoments, rollout_mean


def rollout() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Advantages [8, 6] with ragged masks, scores [8] and per-sequence KLs [8]: two halves
    of unequal token counts, so a mean of per-process means would be wrong."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(8, 6, generator=generator) * 3 + 1
    lengths = torch.tensor([6, 1, 2, 6, 5, 6, 6, 3])
    mask = torch.arange(6) < lengths[:, None]
    scores = torch.randn(8, generator=generator) * 2 - 0.5
    kl = torch.rand(8, generator=generator) * 4
    return values, mask, scores, kl


def statistics(values, mask, scores, kl, sum_over_processes=None) -> dict:
    moments = RunningMoments()
    moments.update(scores[:2] if sum_over_processes is None else scores[:1], sum_over_processes)  # two updates
    moments.update(scores[2:] if sum_over_processes is None else scores[1:], sum_over_processes)
    mean_kl, samples = rollout_mean(kl, sum_over_processes)
    return {
        "whitened": masked_whiten(values, mask, sum_over_processes=sum_over_processes).tolist(),
        "whitened_no_shift": masked_whiten(values, mask, shift_mean=False, sum_over_processes=sum_over_processes).tolist(),
        "moments": [moments.mean, moments.var, moments.count],
        "kl": [float(mean_kl), samples],
    }


def join_two_processes(rank: int, init_file: str):
    """Join a 2-process gloo group; returns the sum over both processes."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)

    def sum_over_processes(tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    return sum_over_processes


def _worker(rank: int, init_file: str, out: str) -> None:
    sum_over_processes = join_two_processes(rank, init_file)

    values, mask, scores, kl = (t[rank * 4 : (rank + 1) * 4] for t in rollout())
    # rank 0 holds scores 0..3, rank 1 scores 4..7; each update takes 1 then 3 of them
    result = statistics(values, mask, scores, kl, sum_over_processes)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo file init")
def test_two_processes_get_the_statistics_of_the_whole_rollout(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    values, mask, scores, kl = rollout()
    one = statistics(values, mask, scores, kl)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for key in ("whitened", "whitened_no_shift"):
        together = torch.tensor(ranks[0][key] + ranks[1][key])
        torch.testing.assert_close(together, torch.tensor(one[key]), atol=1e-5, rtol=1e-5)
        local = torch.cat([masked_whiten(values[:4], mask[:4]), masked_whiten(values[4:], mask[4:])])
        assert not torch.allclose(local, torch.tensor(one[key]), atol=1e-3)  # per-process whitening differs
    for rank in ranks:
        # each process folds in 2 + 6 scores over two updates: the same as one process's 2 + 6
        assert rank["moments"][2] == one["moments"][2] == 8
        assert rank["moments"][:2] == pytest.approx(one["moments"][:2], rel=1e-9)
        assert rank["kl"] == pytest.approx(one["kl"], rel=1e-6)


# -- the token mean over the batch (DAPO, CISPO, REINFORCE++) under data parallelism ----------
# Four sequences of 3, 1, 2 and 1 completion tokens: process 0 holds the first two (4 tokens),
# process 1 the last two (3 tokens). With unequal counts the mean of per-process token means
# is not the token mean of the whole batch.
TOKEN_LOGPS = [[-1.0, -2.0, -0.5], [-0.3], [-1.5, -0.2], [-0.7]]
OLD = [[-1.1, -1.8, -0.6], [-0.3], [-1.4, -0.3], [-0.6]]
SLOPES = [[0.5, -1.0, 2.0], [1.5], [-0.5, 1.0], [3.0]]
ADVANTAGES = [1.0, -0.5, 0.8, -1.2]


class SharedParameter:
    """A policy whose log-probs are the given ones plus ``theta * slope`` per token, with one
    ``theta`` every process holds: the gradient DDP averages over processes is d loss / d theta."""

    def __init__(self, rows: slice):
        from tests.objective_fakes import token_logps

        self.theta = torch.zeros((), requires_grad=True)
        self.base, self.slopes = token_logps(TOKEN_LOGPS[rows]), token_logps(SLOPES[rows]).token_logps

    def policy_logps(self, batch, **settings):
        from lightning_rlhf.algorithm import SequenceLogps

        return SequenceLogps(self.base.token_logps + self.theta * self.slopes, self.base.mask)


def dapo_gradient(rows: slice, sum_over_processes=None, world_size: int = 1, counts_over_processes: bool = True) -> float:
    """d loss / d theta of DAPO's loss on the given rows, the minibatch's counts made the
    processes' mean counts as the online module makes them; averaged over processes as DDP does."""
    from types import SimpleNamespace

    from lightning_rlhf import create_algorithm
    from lightning_rlhf.modules.online import OnlineMixin
    from tests.objective_fakes import token_logps

    ctx = SharedParameter(rows)
    minibatch = {"old_logps": token_logps(OLD[rows]).token_logps, "advantages": torch.tensor(ADVANTAGES[rows]),
                 "loss_rows": torch.tensor(len(OLD[rows])), "loss_tokens": torch.tensor(sum(len(r) for r in OLD[rows]))}
    if counts_over_processes:
        module = SimpleNamespace(sum_over_processes=sum_over_processes, trainer=SimpleNamespace(world_size=world_size),
                                 device=torch.device("cpu"))
        OnlineMixin._count_over_processes(module, minibatch)
    create_algorithm("grpo", loss_type="dapo").loss(ctx, minibatch).loss.backward()
    grad = ctx.theta.grad
    return float(grad if sum_over_processes is None else sum_over_processes(grad) / world_size)


def _token_mean_worker(rank: int, init_file: str, out: str) -> None:
    sum_over_processes = join_two_processes(rank, init_file)

    rows = slice(2 * rank, 2 * rank + 2)
    result = {"global": dapo_gradient(rows, sum_over_processes, 2),
              "local": dapo_gradient(rows, sum_over_processes, 2, counts_over_processes=False)}
    with open(f"{out}/grad{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo file init")
def test_two_processes_take_the_token_mean_of_the_whole_batch(tmp_path):
    """Two processes holding 4 and 3 of the batch's 7 tokens end with the gradient one
    process holding all 7 gets; dividing by each process's own count would not."""
    mp.start_processes(_token_mean_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    whole = dapo_gradient(slice(0, 4))
    for rank in range(2):
        result = json.loads((tmp_path / f"grad{rank}.json").read_text())
        assert result["global"] == pytest.approx(whole, rel=1e-6)
        assert result["local"] != pytest.approx(whole, rel=1e-2)
