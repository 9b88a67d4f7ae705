"""What this CPU runs fast, and how to read a figure measured on it.

Two facts change CPU results from one machine to another:

- the kernel path PyTorch dispatches to (``torch.backends.cpu.get_cpu_capability()``:
  ``DEFAULT``, ``AVX2``, ``AVX512``; ``ATEN_CPU_CAPABILITY`` picks a lower one): it
  changes the numerics, so every reported figure names it;
- native bf16 (AVX-512 BF16, AMX): without it a bf16 matrix product is emulated and runs
  about 100x slower than fp32, so bf16 precision is a trap there, not a speed-up.
"""

from __future__ import annotations

import functools
import time
import warnings

import torch

# bf16 slower than fp32 by more than this is the emulated path, not a rounding of noise.
SLOW_BF16_RATIO = 2.0


def cpu_capability() -> str:
    """The kernel path PyTorch runs on this CPU (``AVX2``, ``AVX512``, ``DEFAULT``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


@functools.cache
def bf16_slowdown(n: int = 512, repeats: int = 2) -> float:
    """Measured time of an ``n x n`` bf16 matrix product over the fp32 one (best of
    ``repeats``): about 0.5 with native bf16, 50-150 where it is emulated (at n = 256 the
    emulated path is only about 5x slower, so smaller products understate the trap). Takes
    under a second on the slow path and milliseconds on the fast one; measured once per
    process."""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # first call pays for dispatch and packing
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def has_fast_bf16() -> bool:
    return bf16_slowdown() <= SLOW_BF16_RATIO


def fast_precision() -> str:
    """The Lightning precision that trains fastest on this CPU: ``bf16-mixed`` where bf16 is
    native, ``32-true`` where it is emulated."""
    return "bf16-mixed" if has_fast_bf16() else "32-true"


def warn_if_slow_bf16(precision: str | int | None, accelerator: str | None) -> None:
    """Warn when a CPU run asks for bf16 on a CPU that only emulates it."""
    if not str(precision).startswith("bf16") or not _runs_on_cpu(accelerator):
        return
    ratio = bf16_slowdown()
    if ratio > SLOW_BF16_RATIO:
        warnings.warn(
            f"precision {precision!r} on a CPU without native bf16 ({cpu_capability()} kernels): a bf16 matrix "
            f"product measured {ratio:.0f}x slower than fp32 here; set trainer.precision: 32-true",
            stacklevel=2,
        )


def _runs_on_cpu(accelerator) -> bool:
    # imported here: importing Lightning takes seconds, and the pipeline and its workers
    # read the kernel path long before (or without) any training
    from lightning.pytorch.accelerators import CPUAccelerator

    if isinstance(accelerator, CPUAccelerator):
        return True
    name = str(accelerator or "auto").lower()
    if name == "cpu":
        return True
    return name == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()


def second_kernel_path() -> str:
    """Another kernel path this CPU can run, for checking that a result does not hang on one:
    ``avx2`` on an AVX-512 CPU, ``default`` (no vector extensions) on the others."""
    return "avx2" if cpu_capability().upper().startswith("AVX512") else "default"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--second-path"]:
        print(second_kernel_path())
    else:
        import os

        from lightning_rlhf.wait_policy import CHOSEN

        print(f"kernel path {cpu_capability()}; bf16 matrix product {bf16_slowdown():.2f}x the fp32 time; "
              f"fast precision {fast_precision()}; OpenMP threads wait: {os.environ.get(CHOSEN, 'as torch loaded them')}")
