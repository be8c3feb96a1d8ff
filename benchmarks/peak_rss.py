"""Run `-m module args` or `script.py args` in this process, then print its peak RSS as JSON on the last line.

The peak is VmHWM from /proc/self/status: it starts afresh at exec, unlike getrusage's ru_maxrss, which
a child started with fork and exec inherits from a larger parent.
"""

import json
import runpy
import sys
from pathlib import Path


def status_mib(field: str = "VmHWM") -> float:
    """A memory figure of this process from /proc/self/status (VmHWM: peak RSS; VmRSS: now), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit(f"no {field} in /proc/self/status: peak RSS needs Linux")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
    print(json.dumps({"peak_rss_mib": status_mib()}))
