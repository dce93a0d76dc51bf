"""Two checkouts side by side: CPU per object of each part, both loaded at once.

On a shared machine whose speed drifts by a quarter within minutes, two
runs one after the other compare the minutes more than the code. This runs
``bench/e2e.py --workers 1 --rate R`` from two checkouts at the same time
(each its own PostgreSQL, NATS, API and worker on free ports), so whatever
the machine does, it does to both; after a warm-up it reads every process's
CPU time from ``/proc`` over a window and gives each part's milliseconds of
CPU per object: API, worker, NATS, PostgreSQL, the load generator. A
checkout compared with a copy of itself comes out within about 1%.

A process belongs to the run it descends from; PostgreSQL's server, which
detaches, by its data directory under the run's ``THREEPORT_HOME``.

Run::

    git worktree add /tmp/before HEAD~1   # or a clone at the commit to compare with
    .venv/bin/python bench/compare.py /tmp/before .
    .venv/bin/python bench/compare.py /tmp/before . --rate 150 -- --worker-threads 4

Arguments after ``--`` go to both runs' ``bench/e2e.py``. Each checkout
runs with this interpreter (its packages), its own code first on the path.
It is a benchmark, not a test: it exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("api", "worker", "nats", "postgres", "client")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every process: (parent pid, CPU ticks used so far, command line)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        out[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), command)
    return out


def _part(command: str) -> str:
    if "postgres" in command:
        return "postgres"
    if "cli.main api" in command:
        return "api"
    if "cli.main worker" in command:
        return "worker"
    if "nats-server" in command:
        return "nats"
    return "client" if "bench/e2e" in command else "other"


def _home_of(pid: int) -> str:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    for entry in environ:
        if entry.startswith(b"THREEPORT_HOME="):
            return entry.split(b"=", 1)[1].decode()
    return ""


def _owner(pid: int, table: dict, roots: list[int], homes: list[str]) -> int | None:
    """Which run ``pid`` belongs to: the one it descends from, or whose home its command names."""
    for _ in range(64):
        if pid not in table:
            return None
        if pid in roots:
            return roots.index(pid)
        command = table[pid][2]
        for index, home in enumerate(homes):
            if home and home in command:
                return index
        pid = table[pid][0]
    return None


def compare(checkouts: list[Path], rate: int, warmup: float, window: float, extra: list[str]) -> None:
    logs = [tempfile.NamedTemporaryFile("w+", prefix="compare-", suffix=".log", delete=False) for _ in checkouts]
    runs = [
        subprocess.Popen(
            [sys.executable, "bench/e2e.py", "--workers", "1", "--rate", str(rate)]
            + ["--objects", str(int(rate * (warmup + window + 10))), *extra],
            cwd=checkout,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for checkout, log in zip(checkouts, logs)
    ]
    print(f"both runs paced at {rate}/s; CPU read over {window:.0f} s after {warmup:.0f} s", flush=True)
    time.sleep(warmup)
    before = _processes()
    roots = [run.pid for run in runs]
    homes = ["", ""]
    for pid, (parent, _, command) in before.items():
        if "cli.main up" in command and parent in roots:
            homes[roots.index(parent)] = _home_of(pid)
    time.sleep(window)
    after = _processes()
    used = [collections.Counter() for _ in checkouts]
    for pid, (_, ticks, command) in after.items():
        owner = _owner(pid, after, roots, homes)
        if owner is not None:
            spent = ticks - (before[pid][1] if pid in before else 0)
            used[owner][_part(command)] += spent / CLOCK_TICKS * 1000 / (window * rate)
    for run in runs:
        run.wait()
    width = max(len("ms of CPU per object"), *(len(str(checkout)) for checkout in checkouts))
    print(f"{'ms of CPU per object':{width}s} " + " ".join(f"{part:>8s}" for part in PARTS) + "    total")
    for checkout, counter in zip(checkouts, used):
        figures = " ".join(f"{counter[part]:8.2f}" for part in PARTS)
        print(f"{str(checkout):{width}s} {figures} {sum(counter.values()):8.2f}")
    for checkout, log in zip(checkouts, logs):
        log.seek(0)
        summary = [line for line in log.read().splitlines() if "goal" in line or line.startswith("1 ")]
        print(
            f"{checkout}: " + (" | ".join(" ".join(line.split()) for line in summary) or f"no result, see {log.name}")
        )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="a checkout (its bench/e2e.py and code)")
    parser.add_argument("after", type=Path, help="another checkout")
    parser.add_argument("--rate", type=int, default=100, help="objects/s posted to each (default 100)")
    parser.add_argument("--warmup", type=float, default=12.0, help="seconds before the window (default 12)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of CPU read (default 10)")
    args = parser.parse_args(argv)
    checkouts = [args.before.resolve(), args.after.resolve()]
    for checkout in checkouts:
        if not (checkout / "bench" / "e2e.py").exists():
            parser.error(f"{checkout} is not a checkout of this project (no bench/e2e.py)")
    compare(checkouts, args.rate, args.warmup, args.window, extra)


if __name__ == "__main__":
    main()
