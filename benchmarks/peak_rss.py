"""Run `-m module args` or `script.py args` in this process, then print its peak RSS as JSON on the last line.

The peak is VmHWM from /proc/self/status: it starts afresh at exec, unlike getrusage's ru_maxrss, which
a child started with fork and exec inherits from a larger parent. Beside it, the peak of the process's own memory
(RssAnon, sampled every 20 ms by a thread): RSS also counts the pages of memory-mapped files it has read, which are
the kernel's page cache, shared with every reader of the files and reclaimed under pressure.
"""

import json
import runpy
import sys
import threading
from pathlib import Path


def status_mib(field: str = "VmHWM") -> float:
    """A memory figure of this process from /proc/self/status (VmHWM: peak RSS; VmRSS: now), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit(f"no {field} in /proc/self/status: peak RSS needs Linux")


def sample_anonymous(peak: list[float], stop: threading.Event) -> None:
    while True:
        peak[0] = max(peak[0], status_mib("RssAnon"))
        if stop.wait(0.02):
            return


if __name__ == "__main__":
    anonymous, stop = [0.0], threading.Event()
    sampler = threading.Thread(target=sample_anonymous, args=(anonymous, stop), daemon=True)
    sampler.start()
    args = sys.argv[1:]
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
    stop.set()
    sampler.join()
    print(json.dumps({"peak_rss_mib": status_mib(), "peak_anonymous_mib": anonymous[0]}))
