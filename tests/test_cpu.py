"""The CPU checks: bf16 only where it is native, a second kernel path to test on."""

import warnings

import pytest

from lightning_rlhf import cpu
from lightning_rlhf.cli import main


@pytest.fixture
def emulated_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "bf16_slowdown", lambda: 97.0)


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "bf16_slowdown", lambda: 0.5)


def test_bf16_on_an_emulating_cpu_warns_with_the_measured_slowdown(emulated_bf16):
    with pytest.warns(UserWarning, match=r"bf16 matrix product measured 97x slower than fp32 here; set trainer.precision: 32-true"):
        cpu.warn_if_slow_bf16("bf16-mixed", "cpu")
    assert cpu.fast_precision() == "32-true"


def test_no_warning_for_fp32_native_bf16_or_a_gpu(emulated_bf16, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu.warn_if_slow_bf16("32-true", "cpu")
        cpu.warn_if_slow_bf16("bf16-mixed", "gpu")
    monkeypatch.setattr(cpu, "bf16_slowdown", lambda: 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu.warn_if_slow_bf16("bf16-true", "cpu")
    assert cpu.fast_precision() == "bf16-mixed"


def test_a_recipe_asking_for_bf16_is_warned_through_the_command(emulated_bf16):
    args = ["fit", "--config", "recipes/dpo/tiny.yaml", "--trainer.logger", "false", "--trainer.max_steps", "1",
            "--trainer.enable_progress_bar", "false", "--model.init_args.export_dir", "null", "--trainer.enable_checkpointing", "false",
            "--trainer.precision", "bf16-mixed", "--trainer.limit_val_batches", "0"]
    with pytest.warns(UserWarning, match="97x slower than fp32"):
        assert main(args) == 0


def test_the_slowdown_is_measured_not_assumed():
    ratio = cpu.bf16_slowdown()
    assert ratio > 0
    # Native bf16 is at least as fast as fp32 within noise; the emulated path is far slower.
    assert (ratio <= cpu.SLOW_BF16_RATIO) == cpu.has_fast_bf16()


def test_second_kernel_path(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_capability", lambda: "AVX512")
    assert cpu.second_kernel_path() == "avx2"
    monkeypatch.setattr(cpu, "cpu_capability", lambda: "AVX2")
    assert cpu.second_kernel_path() == "default"


def test_the_wait_policy_is_passive_on_shared_cores_and_the_user_s_wins():
    from lightning_rlhf.wait_policy import SHARED_CORES, choose

    assert choose({}, 0.0)[0] is None  # alone: libgomp's default, spinning a while
    assert choose({}, SHARED_CORES)[0] == "PASSIVE"  # another process busy
    assert choose({}, None)[0] == "PASSIVE"  # no /proc to tell
    assert choose({"WORLD_SIZE": "2"}, 0.0)[0] == "PASSIVE"  # data-parallel processes share the cores
    assert choose({"OMP_WAIT_POLICY": "ACTIVE", "WORLD_SIZE": "2"}, 1.0)[0] is None  # the user's, untouched


def test_a_process_busy_in_one_look_only_is_not_load(monkeypatch):
    """The least busy of the looks counts: a process starting beside this one (a burst of
    a few tens of milliseconds) does not make the threads wait passively for a whole run,
    one busy in every look does."""
    from lightning_rlhf import wait_policy

    def machine(other_ticks_per_look):
        readings = iter([(0, 0, 100)] + [(sum(other_ticks_per_look[: i + 1]), 0, 100) for i in range(3)])
        monkeypatch.setattr(wait_policy, "_ticks", lambda: next(readings))
        monkeypatch.setattr(wait_policy.time, "sleep", lambda seconds: None)
        return wait_policy.other_cpu_use(0.15, looks=3)

    assert machine([5, 1, 0]) == 0.0  # a starting interpreter, then quiet
    assert machine([5, 5, 4]) == pytest.approx(0.8)  # a busy neighbour in every look
    assert wait_policy.choose({}, machine([5, 5, 5]))[0] == "PASSIVE"


def test_importing_the_package_chooses_the_wait_policy_before_torch_loads():
    """A busy loop beside this process is seen; the choice is made in the environment
    before torch loads (the OpenMP runtime reads it then); a value the user exported wins."""
    import os
    import subprocess
    import sys

    from lightning_rlhf.wait_policy import other_cpu_use

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert other_cpu_use(0.5) >= 0.5
    finally:
        busy.kill()
    code = "import lightning_rlhf, os, torch; print(os.environ.get('OMP_WAIT_POLICY'), '|', os.environ['LIGHTNING_RLHF_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LIGHTNING_RLHF_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "WORLD_SIZE": "2"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE | PASSIVE: one of 2 data-parallel processes"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE | OMP_WAIT_POLICY=ACTIVE from the environment"


def test_processes_started_side_by_side_wait_passively_unless_the_user_chose(monkeypatch):
    import os

    from lightning_rlhf.wait_policy import CHOSEN, side_by_side

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with side_by_side(3):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "3 processes" in os.environ[CHOSEN]
    assert "OMP_WAIT_POLICY" not in os.environ  # this process's environment as it was
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv(CHOSEN, "OMP_WAIT_POLICY=ACTIVE from the environment")
    with side_by_side(3):
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
