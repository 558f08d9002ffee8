"""Run a command and report the peak resident memory of its whole process tree.

    python .ci/peak_rss.py [--out FILE] -- command args...

Samples every 0.2 s the summed RSS of the command and all its descendants (servers, browsers)
from /proc, then writes ``peak_rss_mb=<MB> wall_s=<seconds>`` to FILE (or stderr) and exits with
the command's status. Linux only (reads /proc); elsewhere it just runs the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields after the last ')' are fixed
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root: int) -> int:
    children = _children_map()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kb(pid)
        todo.extend(children.get(pid, ()))
    return total


def main(argv: list[str]) -> int:
    out = None
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.monotonic()
    proc = subprocess.Popen(argv)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            if os.path.isdir("/proc"):
                peak[0] = max(peak[0], tree_rss_kb(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        status = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        status = proc.wait()
    done.set()
    sampler.join()
    line = f"peak_rss_mb={peak[0] / 1024:.0f} wall_s={time.monotonic() - start:.0f}"
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
