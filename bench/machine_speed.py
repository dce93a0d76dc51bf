"""How fast this machine runs right now: a pure-Python busy loop on every CPU at once.

A cloud machine's speed drifts with what else its host runs: on the 2-core
build machine the same loop has made from 18 to 35 million iterations per
second per CPU within one day, with little or no CPU time reported as stolen.
A benchmark figure means little without the speed it was taken at, so the
benchmarks take this reading before and after a pass and print it beside
their figures.

Run alone::

    .venv/bin/python bench/machine_speed.py          # 2 s
    .venv/bin/python bench/machine_speed.py 10       # 10 s
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

__all__ = ["loop_rate"]

#: Iterations between two looks at the clock.
_CHUNK = 100_000


def _spin(seconds: float) -> float:
    """Iterations per second of a ``for`` loop adding one to a local, run for about ``seconds`` on this process's CPU."""
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(_CHUNK):
            count += 1
        now = time.perf_counter()
        if now >= end:
            return count / (now - start)


def loop_rate(seconds: float = 2.0, cpus: int | None = None) -> float:
    """Millions of loop iterations per second per CPU, with one loop on each CPU at once (their mean).

    Each loop runs in a new interpreter of its own (this file with
    ``--spin``), which times itself, so start-up is not counted; each has
    ended when this returns (nothing is left behind, not even a helper
    process of ``multiprocessing``).
    """
    cpus = cpus or os.cpu_count() or 1
    command = [sys.executable, __file__, "--spin", str(seconds)]
    loops = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(cpus)]
    rates = [float(loop.communicate()[0]) for loop in loops]
    return sum(rates) / len(rates) / 1e6


if __name__ == "__main__":
    if sys.argv[1:2] == ["--spin"]:  # one loop, for loop_rate
        print(_spin(float(sys.argv[2])))
        sys.exit(0)
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"{loop_rate(secs):.1f} million iterations per second per CPU ({os.cpu_count()} CPUs, {secs:g} s)")
