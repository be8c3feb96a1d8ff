"""What every stage's command line shares: one line per problem on stderr and exit status 2."""

from __future__ import annotations

import os
import sys

from gist_mining.errors import InputError, UsageError


def run(main) -> None:
    # No Hub here: loading must come from local files, and a stray lookup should fail fast, not hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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


def shard_arguments(parser) -> None:
    # torchrun sets WORLD_SIZE and RANK, so each rank takes its part with no flags.
    parser.add_argument("--num-shards", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                        help="processes sharing this run (a job array, torchrun ranks)")
    parser.add_argument("--shard-index", type=int, default=int(os.environ.get("RANK", 0)),
                        help="this process's part, 0 <= I < --num-shards")


def my_shards(n_shards: int, num_processes: int, index: int) -> list[int]:
    if num_processes < 1 or not 0 <= index < num_processes:
        raise UsageError(f"--shard-index must be in [0, {num_processes}) and --num-shards >= 1")
    return [s for s in range(n_shards) if s % num_processes == index]
