"""What every stage's command line shares: one line per problem on stderr and exit status 2."""

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


def model_arguments(parser) -> None:
    """What load_model takes besides the name: how a Hugging Face id is fetched and whether its code may run."""
    parser.add_argument("--revision", default=None,
                        help="branch, tag or commit of a Hugging Face model id (default: main)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a model that ships its own Python code run it as it loads (off by default)")


def prompt_arguments(parser) -> None:
    """Text prepended to queries and to documents (resolved by gist_mining.models.role_prompts)."""
    parser.add_argument("--prompt", default=None, help="text prepended to queries and documents alike")
    for role in ("query", "document"):
        group = parser.add_mutually_exclusive_group()
        group.add_argument(f"--{role}-prompt", default=None, help=f"text prepended to every {role} (overrides --prompt)")
        group.add_argument(f"--{role}-prompt-name", default=None,
                           help=f"the model's own prompt of this name (its config's prompts) for {role}s")


def shard_arguments(parser) -> None:
    parser.add_argument("--num-shards", default="1",
                        help="processes sharing this run (a job array, ranks); 'auto': torchrun's WORLD_SIZE and RANK")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="this process's part, 0 <= I < --num-shards (default 0)")


def my_shards(args, n_shards: int, stage: str) -> list[int]:
    """The shards this process does, said in the log. Never guessed from the environment unless asked:
    launchers other than torchrun (accelerate, deepspeed, Slurm wrappers) set WORLD_SIZE too."""
    world = os.environ.get("WORLD_SIZE")
    if args.num_shards == "auto":
        if args.shard_index is not None:
            raise UsageError("--shard-index comes from RANK with --num-shards auto; give one or the other")
        processes, index = int(world or 1), int(os.environ.get("RANK", 0))
    else:
        try:
            processes, index = int(args.num_shards), args.shard_index or 0
        except ValueError:
            raise UsageError(f"--num-shards must be a number or 'auto', not {args.num_shards!r}") from None
        if world and int(world) > 1 and processes == 1:
            print(f"{stage}: WORLD_SIZE={world} is set, but this process does every shard; "
                  "pass --num-shards auto to split the work across ranks", file=sys.stderr)
    if processes < 1 or not 0 <= index < processes:
        raise UsageError(f"--shard-index must be in [0, {processes}) and --num-shards >= 1")
    shards = [s for s in range(n_shards) if s % processes == index]
    print(f"{stage}: process {index} of {processes} does {len(shards)} of {n_shards} shard(s)"
          f"{': ' + _ranges(shards) if processes > 1 else ''}", file=sys.stderr)
    return shards


def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (f", ... ({len(values)} in all)" if len(values) > 8 else "")
