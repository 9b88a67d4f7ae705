"""How PyTorch's OpenMP threads wait at a barrier, chosen before torch loads.

PyTorch's CPU kernels split work over OpenMP threads (libgomp on Linux), which meet at a
barrier after every operation. Left alone, a waiting thread spins for a while before it
sleeps: the fastest choice when the cores are this process's, and the slowest when
another busy process shares them, because the spinning thread takes the core the thread
it waits for needs. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once: fair
on shared cores, slower alone. On 2 cores, one GRPO step of the checkable world's model
(``benchmarks/grpo_vs_trl.py``'s worker, README "Speed"): alone, 139-155 completions/s
passive against 241-266 spinning; beside one busy loop, 151-160 passive against 57-58
spinning.

So importing ``lightning_rlhf`` looks at the machine for a moment (:data:`SAMPLE_SECONDS`)
and leaves libgomp's default where the rest of the machine is idle, and sets ``PASSIVE``
where it is not, or where this process is one of several of a data-parallel run (which
share the cores by design). A value the user exported wins. The choice does not change
any number a run computes, only how fast it runs; a machine that becomes busy after the
choice runs as a busy one does with the default (export ``OMP_WAIT_POLICY=PASSIVE`` for
long runs on shared machines). Reading ``/proc/stat`` keeps this module free of torch.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

# How long the machine is watched, in how many looks, and how much of a core other
# processes may use before the threads wait passively. The least busy look counts: a
# process that only starts beside this one (a pipe's reader, a shell's command) is busy for
# a few tens of milliseconds, where a process that shares the cores is busy in every look.
# A core's worth of ticks at 100 Hz is 5 in a 50 ms look; half a core stays clear of the
# counting's one-tick noise.
SAMPLE_SECONDS = 0.15
LOOKS = 3
SHARED_CORES = 0.5
CHOSEN = "LIGHTNING_RLHF_WAIT_POLICY"  # what was chosen and why, for `python -m lightning_rlhf.cpu`


def _ticks() -> tuple[int, int, int]:
    """All CPUs' busy ticks, and this process's own (user + system), from /proc."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(fields) - idle, int(own[11]) + int(own[12]), os.sysconf("SC_CLK_TCK")


def other_cpu_use(seconds: float = SAMPLE_SECONDS, looks: int = LOOKS) -> float | None:
    """Cores' worth of CPU time the rest of the machine used in the least busy of ``looks``
    equal spans of ``seconds``; None where /proc cannot tell (not Linux)."""
    span = seconds / looks
    try:
        readings = [_ticks()]
        for _ in range(looks):
            time.sleep(span)
            readings.append(_ticks())
    except (OSError, ValueError, IndexError):
        return None
    hz = readings[0][2]
    return min(max(after[0] - before[0] - (after[1] - before[1]), 0) / hz / span
               for before, after in zip(readings, readings[1:]))


def choose(environ: Mapping[str, str], other_use: float | None) -> tuple[str | None, str]:
    """The ``OMP_WAIT_POLICY`` to set (None: leave libgomp's default) and why."""
    if "OMP_WAIT_POLICY" in environ:
        return None, f"OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']} from the environment"
    processes = max(int(environ.get(name, "1") or 1) for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    if processes > 1:
        return "PASSIVE", f"PASSIVE: one of {processes} data-parallel processes"
    if other_use is None:
        return "PASSIVE", "PASSIVE: could not read the machine's load"
    if other_use >= SHARED_CORES:
        return "PASSIVE", f"PASSIVE: other processes used {other_use:.1f} cores"
    return None, f"libgomp's default (spin, then sleep): other processes used {other_use:.1f} cores"


def apply(environ: dict | None = None) -> None:
    """Choose and set the wait policy in ``environ`` (``os.environ``) unless one is set."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ and environ.get(CHOSEN, "").startswith("PASSIVE"):
        return  # set by this module in a parent process, and inherited: the parent's reason stands
    policy, reason = choose(environ, None if "OMP_WAIT_POLICY" in environ else other_cpu_use())
    if policy is not None:
        environ["OMP_WAIT_POLICY"] = policy
    environ[CHOSEN] = reason


@contextlib.contextmanager
def side_by_side(processes: int) -> Iterator[None]:
    """While processes are started inside it, ``processes`` of them sharing the cores by
    design: their threads wait passively, unless the user chose a policy."""
    user_chose = "OMP_WAIT_POLICY" in os.environ and not os.environ.get(CHOSEN, "").startswith("PASSIVE")
    shared = {} if user_chose else {"OMP_WAIT_POLICY": "PASSIVE", CHOSEN: f"PASSIVE: one of {processes} processes side by side"}
    before = {key: os.environ.get(key) for key in shared}
    os.environ.update(shared)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
