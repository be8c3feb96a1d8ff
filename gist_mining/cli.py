"""What every stage's command line shares: one line per problem on stderr and exit status 2, and the command line a
plan records. The console script itself is pipeline.cli."""

from __future__ import annotations

import os
import shlex
import sys

from gist_mining.errors import InputError, UsageError


def run(main) -> None:
    # HF_HUB_OFFLINE is left to the user: bundled and local models never ask the Hub, and a Hugging Face id
    # asks it (with a timeout) only when the variable is unset.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        main()
    except InputError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def command(module: str, argv: list | None) -> str:
    """The command line that ran a stage (``argv`` None: this process's), kept in its plan: a stale work
    directory names the command that rebuilds it."""
    return shlex.join(["python", "-m", module, *map(str, sys.argv[1:] if argv is None else argv)])
