"""The gist-mining console script: ``gist-mining COMMAND ...`` runs the command's own parser, as ``python -m MODULE``
does (``python -m pipeline.cli COMMAND ...`` where the script is not on the path)."""

from __future__ import annotations

import sys

from gist_mining.cli import run

# The gist-mining console script's subcommands: each is the module's own command line (python -m MODULE).
COMMANDS = {"embed": "pipeline.embed", "mask": "pipeline.mask", "train": "train.run", "export": "pipeline.export",
            "report": "pipeline.report", "cache": "pipeline.cache", "run": "pipeline.run",
            "evaluate": "pipeline.evaluate"}


def main(argv: list[str] | None = None) -> None:
    """``gist-mining COMMAND ...``: the same parsers as ``python -m MODULE ...``, one line of help each."""
    import argparse
    import importlib

    from gist_mining import __doc__ as summary
    from gist_mining import __version__

    argv = sys.argv[1:] if argv is None else list(argv)
    listing = "\n".join(f"  {name:<8} {_first_line(module)}" for name, module in COMMANDS.items())
    parser = argparse.ArgumentParser(prog="gist-mining", description=summary, formatter_class=argparse.RawTextHelpFormatter,
                                     epilog=f"commands (`gist-mining COMMAND --help` for its options):\n{listing}")
    parser.add_argument("--version", action="version", version=f"gist-mining {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's options")
    # The command's own options (its --help too) go to it untouched.
    split = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    parsed = parser.parse_args(argv[: split + 1])
    module = importlib.import_module(COMMANDS[parsed.command])
    run(lambda: module.main(argv[split + 1:], prog=f"gist-mining {parsed.command}"))


def _first_line(module: str) -> str:
    """A module's summary, read from its source: listing the commands imports none of them (torch is slow)."""
    import ast
    import importlib.util

    source = importlib.util.find_spec(module).origin
    with open(source) as fh:
        doc = ast.get_docstring(ast.parse(fh.read())) or ""
    return doc.split("\n")[0]


if __name__ == "__main__":
    main()
