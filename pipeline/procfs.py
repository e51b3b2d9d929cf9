"""What Linux's /proc says of a process: its state, parent and start time (``/proc/PID/stat``), its command line.
Elsewhere every lookup finds nothing."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Stat", "alive", "argv", "children", "processes", "stat"]

Stat = tuple[str, int, int]  # (state, parent pid, start time in clock ticks after boot)


def stat(pid: int) -> Stat | None:
    """``(state, parent pid, start time)`` of a process, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def alive(pid: int, started: int) -> bool:
    """Process ``pid``, started at ``started``, exists and has not ended (a zombie has ended: it only waits to be
    reaped)."""
    found = stat(pid)
    return found is not None and found[2] == started and found[0] not in "ZX"


def processes() -> dict[int, Stat]:
    """Every process's :func:`stat`."""
    table = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            found = stat(int(entry.name))
            if found is not None:  # not ended while listed
                table[int(entry.name)] = found
    return table


def children(pid: int, table: dict[int, Stat] | None = None) -> list[int]:
    """The running children of ``pid`` (a zombie has ended), from ``table`` (default: :func:`processes`)."""
    table = processes() if table is None else table
    return [p for p, (state, ppid, _) in table.items() if ppid == pid and state not in "ZX"]


def argv(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []
