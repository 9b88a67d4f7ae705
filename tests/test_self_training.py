"""Rejection sampling and ReST: what each phase keeps (hand-made candidates), what each
phase actually trains on (a real run on the tiny model, batches read at the loss), and a
run killed mid-phase that resumes on the same rows and ends with the same weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from lightning_rlhf.cli import main
from lightning_rlhf.self_training import Candidate, Phase
from lightning_rlhf.training_cli import RLHFCLI
from lightning_rlhf_plugins.rejection_sampling import RejectionSampling
from lightning_rlhf_plugins.rest import ReST
from tests.faults import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def candidate(prompt: int, reward: float, text: str | None = None, finished: bool = True, phase: str = "round-1", k: int = 0):
    return Candidate(prompt, f"prompt {prompt}", text or f" answer {prompt}.{k} ({reward})", reward, finished, phase, k)


# -- selection, by hand ---------------------------------------------------------------------
def test_rejection_sampling_keeps_each_prompts_argmax_and_honours_the_threshold():
    grown = [
        candidate(0, 0.1, k=0), candidate(0, 0.9, k=1), candidate(0, 0.5, k=2),
        candidate(1, 0.2, k=0), candidate(1, 0.95, k=1, finished=False), candidate(1, 0.3, k=2),
        candidate(2, -0.5, k=0), candidate(2, -0.2, k=1),
        candidate(3, 0.7, k=0), candidate(3, 0.7, k=1),  # a tie: the earlier sample
    ]
    phase = RejectionSampling().phases()[0]
    kept = RejectionSampling().select(grown, phase)
    # prompt 1's 0.95 was cut off at max_new_tokens (no EOS): its best usable sample is 0.3
    assert [(c.prompt_index, c.reward, c.sample) for c in kept] == [(0, 0.9, 1), (1, 0.3, 2), (2, -0.2, 1), (3, 0.7, 0)]

    with_floor = RejectionSampling(threshold=0.3)
    kept = with_floor.select(grown, with_floor.phases()[0])
    assert [(c.prompt_index, c.reward) for c in kept] == [(0, 0.9), (1, 0.3), (3, 0.7)]  # >= 0.3 stays, -0.2 goes

    keep_cut_off = RejectionSampling(require_eos=False)
    assert [c.reward for c in keep_cut_off.select(grown, phase)][:2] == [0.9, 0.95]
    assert RejectionSampling().select([candidate(0, 1.0, text="   ")], phase) == []  # an empty answer is never kept


def test_iterative_pool_keeps_the_best_of_all_earlier_rounds():
    algorithm = RejectionSampling(rounds=3, pool="all")
    first, second, third = algorithm.phases()
    round_1 = [candidate(0, 0.8, phase="round-1", k=0), candidate(0, 0.1, phase="round-1", k=1), candidate(1, 0.2, phase="round-1")]
    kept = algorithm.start_phase(first, round_1).selected
    assert [(c.prompt_index, c.reward, c.phase) for c in kept] == [(0, 0.8, "round-1"), (1, 0.2, "round-1")]

    # Round 2 samples worse for prompt 0 and better for prompt 1: prompt 0 keeps round 1's answer.
    round_2 = [candidate(0, 0.3, phase="round-2"), candidate(0, 0.5, phase="round-2", k=1), candidate(1, 0.6, phase="round-2")]
    kept = algorithm.start_phase(second, round_2).selected
    assert [(c.prompt_index, c.reward, c.phase) for c in kept] == [(0, 0.8, "round-1"), (1, 0.6, "round-2")]

    # The pool is in the checkpointed state: a fresh instance given it selects the same in round 3.
    resumed = RejectionSampling(rounds=3, pool="all")
    resumed.load_state_dict(algorithm.state_dict())
    assert resumed.current.phase == second and resumed.current.selected == algorithm.current.selected
    round_3 = [candidate(0, 0.4, phase="round-3"), candidate(1, 0.1, phase="round-3")]
    kept = resumed.start_phase(third, round_3).selected
    assert [(c.reward, c.phase) for c in kept] == [(0.8, "round-1"), (0.6, "round-2")]

    # Llama 2's first iterations: only the latest round competes.
    last_only = RejectionSampling(rounds=2, pool="last")
    last_only.start_phase(last_only.phases()[0], round_1)
    kept = last_only.start_phase(last_only.phases()[1], round_2).selected
    assert [(c.prompt_index, c.reward) for c in kept] == [(0, 0.5), (1, 0.6)]


def test_rest_phases_apply_the_thresholds_in_order_within_each_grow_step():
    algorithm = ReST(grow_steps=2, thresholds=[0.0, 0.5, 0.8])
    schedule = [(p.index, p.name, p.grow, p.threshold) for p in algorithm.phases()]
    assert schedule == [
        (0, "grow-1-improve-1", True, 0.0), (1, "grow-1-improve-2", False, 0.5), (2, "grow-1-improve-3", False, 0.8),
        (3, "grow-2-improve-1", True, 0.0), (4, "grow-2-improve-2", False, 0.5), (5, "grow-2-improve-3", False, 0.8),
    ]
    grow_set = [candidate(0, r, k=k) for k, r in enumerate([-0.3, 0.0, 0.4, 0.5, 0.79, 0.8, 0.95])]
    sizes = []
    for phase in algorithm.phases()[:3]:
        kept = algorithm.start_phase(phase, grow_set if phase.grow else None).selected
        assert kept == [c for c in grow_set if c.reward >= phase.threshold]  # every sample at or above the floor
        sizes.append(len(kept))
    assert sizes == [6, 4, 2]
    with pytest.raises(ValueError, match="strictly increasing"):
        ReST(thresholds=[0.5, 0.5])


# -- what the loss actually sees -----------------------------------------------------------------
def tiny_recipe(tmp_path: Path, algorithm: dict, epochs: int, name: str = "run", callbacks: list | None = None, batch_size: int = 16) -> Path:
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": epochs,
            "reload_dataloaders_every_n_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / name),
            "callbacks": [
                {"class_path": "lightning_rlhf.callbacks.RunCheckpoint", "init_args": {"every_n_train_steps": 1}},
                *(callbacks or []),
            ],
        },
        "model": {
            "class_path": "lightning_rlhf.PolicyModule",
            "init_args": {
                "policy": {"name_or_path": "builtin:tiny-llama"},
                "algorithm": algorithm,
                "reward": {"class_path": "lightning_rlhf.rewards.FunctionReward", "init_args": {"function": "lightning_rlhf.rewards.rules.letter_e_reward"}},
                "optimizer": {"learning_rate": 1e-2, "schedule": "constant"},
            },
        },
        "data": {
            "class_path": "lightning_rlhf.data.SelfTrainingDataModule",
            "init_args": {"path": str(ROOT / "recipes" / "data" / "tiny_prompts.jsonl"), "batch_size": batch_size, "max_length": 48},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def fit_in_subprocess(recipe: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_rlhf.cli", "fit", "--config", str(recipe)],
                          capture_output=True, text=True, timeout=300, env=subprocess_env())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rows_of(batch: dict) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(prompt ids, completion ids) of every row of an SFT batch."""
    rows = []
    for ids, attention, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        rows.append((tuple(ids[attention.bool() & ~completion.bool()].tolist()), tuple(ids[completion.bool()].tolist())))
    return rows


def test_each_rest_improve_step_trains_on_exactly_its_filtered_grow_set(tmp_path):
    from lightning_rlhf.data.tokenize import Tokenization

    algorithm = {"class_path": "rest", "init_args": {"grow_steps": 2, "num_samples": 8, "thresholds": [0.0, 1.0],
                                                     "max_new_tokens": 16, "require_eos": False}}
    cli = RLHFCLI(args=["--config", str(tiny_recipe(tmp_path, algorithm, epochs=4))], run=False)
    fed: dict[int, list] = {}
    loss = cli.model.algorithm.loss

    def recording_loss(ctx, batch):  # the real loss, with the rows it is given written down
        fed.setdefault(ctx.trainer.current_epoch, []).extend(rows_of(batch))
        return loss(ctx, batch)

    cli.model.algorithm.loss = recording_loss
    cli.trainer.fit(cli.model, cli.datamodule)

    run = tmp_path / "run"
    tokenization = Tokenization(cli.model.tokenizer, 48)
    names = [p.name for p in cli.model.algorithm.phases()]
    assert names == ["grow-1-improve-1", "grow-1-improve-2", "grow-2-improve-1", "grow-2-improve-2"]
    for epoch, (name, threshold) in enumerate(zip(names, [0.0, 1.0, 0.0, 1.0])):
        grow_dir = run / ("grow-1-improve-1" if epoch < 2 else "grow-2-improve-1")
        grow_set = read_jsonl(grow_dir / "candidates.jsonl")
        assert len(grow_set) == 18 * 8 and {c["phase"] for c in grow_set} == {grow_dir.name}
        expected = [c for c in grow_set if c["reward"] >= threshold and c["completion"].strip()]
        assert read_jsonl(run / name / "selected.jsonl") == [
            {"prompt": c["prompt"], "completion": c["completion"], "reward": c["reward"], "phase": c["phase"]} for c in expected
        ]
        tokens = [tokenization.encode(c["prompt"], c["completion"]) for c in expected]
        assert Counter(fed[epoch]) == Counter((tuple(t.prompt_ids), tuple(t.completion_ids)) for t in tokens), name
    # The second threshold really filters, and the second Grow step sampled anew from the trained policy.
    assert 0 < len(fed[1]) < len(fed[0]) and 0 < len(fed[3]) < len(fed[2])
    assert read_jsonl(run / "grow-1-improve-1" / "candidates.jsonl") != read_jsonl(run / "grow-2-improve-1" / "candidates.jsonl")
    # selected.jsonl is SFT data as it stands.
    from lightning_rlhf.data import SFTDataModule

    sft = SFTDataModule(path=str(run / "grow-1-improve-2" / "selected.jsonl"), max_length=48)
    sft.tokenizer = cli.model.tokenizer
    assert len(sft.load(sft.path)) == len(fed[1])


def test_rejection_sampling_killed_mid_round_resumes_on_the_same_rows(tmp_path, capsys):
    algorithm = {"class_path": "rejection_sampling", "init_args": {"num_samples": 4, "rounds": 2, "max_new_tokens": 8, "require_eos": False}}
    # 18 prompts, batch 6: 3 steps per round. Killed after step 5, it resumes from step 4: one batch into round 2.
    whole = RLHFCLI(args=["fit", "--config", str(tiny_recipe(tmp_path, algorithm, 2, "whole", batch_size=6))])
    assert whole.trainer.global_step == 6
    kill = {"class_path": "tests.faults.KillAtStep", "init_args": {"step": 5}}
    killed = fit_in_subprocess(tiny_recipe(tmp_path, algorithm, 2, "killed", [kill], batch_size=6))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["algorithm_state"]["current"]["index"] == 1
    round_2 = (tmp_path / "killed" / "round-2" / "candidates.jsonl").read_text()

    resumed = RLHFCLI(args=["fit", "--config", str(tiny_recipe(tmp_path, algorithm, 2, "killed", batch_size=6)), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 6
    assert (tmp_path / "killed" / "round-2" / "candidates.jsonl").read_text() == round_2  # not sampled again
    assert read_jsonl(tmp_path / "killed" / "round-2" / "selected.jsonl") == read_jsonl(tmp_path / "whole" / "round-2" / "selected.jsonl")
    assert resumed.model.algorithm.state_dict() == whole.model.algorithm.state_dict()
    expected = whole.model.policy.state_dict()
    for name, value in resumed.model.policy.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


    # A checkpoint without the phase state is refused, not resampled.
    del checkpoint["algorithm_state"]
    torch.save(checkpoint, tmp_path / "stateless.ckpt")
    recipe = str(tiny_recipe(tmp_path, algorithm, 2, "stateless", batch_size=6))
    assert main(["fit", "--config", recipe, "--ckpt_path", str(tmp_path / "stateless.ckpt")]) == 2
    assert "holds no self-training state" in capsys.readouterr().err


# -- mistakes in a recipe are said plainly -------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--trainer.reload_dataloaders_every_n_epochs=0"], "reload_dataloaders_every_n_epochs: 1"),
        (["--trainer.max_epochs=3"], "set trainer.max_epochs: 2"),
        (["--data.class_path=lightning_rlhf.data.PromptDataModule"], "SelfTrainingDataModule"),
    ],
)
def test_a_run_that_cannot_follow_the_phases_is_a_clear_error(tmp_path, capsys, override, message):
    algorithm = {"class_path": "rejection_sampling", "init_args": {"rounds": 2, "max_new_tokens": 4, "require_eos": False}}
    assert main(["fit", "--config", str(tiny_recipe(tmp_path, algorithm, 2)), *override]) == 2
    assert message in capsys.readouterr().err


def test_phase_metrics_describe_what_was_grown_and_kept():
    algorithm = RejectionSampling(threshold=0.5)
    grown = [candidate(0, 0.2), candidate(0, 0.6, k=1), candidate(1, 0.4), candidate(1, 0.1, finished=False, k=1)]
    metrics = algorithm.start_phase(algorithm.phases()[0], grown, prompts=2, grow_seconds=1.5).metrics
    assert metrics["phase/grown"] == 4 and metrics["phase/grown_reward"] == pytest.approx((0.2 + 0.6 + 0.4 + 0.1) / 4)
    assert metrics["phase/best_of_k_reward"] == pytest.approx((0.6 + 0.4) / 2)
    assert metrics["phase/selected"] == 1 and metrics["phase/selected_reward"] == pytest.approx(0.6)
    assert metrics["phase/unfinished_fraction"] == 0.25 and metrics["phase/threshold"] == 0.5
    assert Phase(0, "x", True, 1, 1.0).threshold is None
