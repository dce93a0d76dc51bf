"""Process bookkeeping shared by the benchmarks: they start servers that fork
helpers of their own, and must leave nothing behind when they finish."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

__all__ = ["proc_table", "become_subreaper", "reap_zombies"]


def proc_table() -> list[tuple[int, str, int, int]]:
    """(pid, state, ppid, pgrp) of every process, from /proc (Linux); empty elsewhere."""
    rows = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        rows.append((int(entry.name), fields[0], int(fields[1]), int(fields[2])))
    return rows


def become_subreaper() -> None:
    """Adopt orphaned descendants, so that a helper a server leaves behind is still ours to stop and reap."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_zombies() -> None:
    """Reap our children that have exited."""
    me = os.getpid()
    for pid, state, ppid, _ in proc_table():
        if ppid == me and state == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
