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
