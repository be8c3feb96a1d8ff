"""MkDocs hook: pages made at build time, so that nothing in docs/ copies what the code or a result file owns.

- Each API reference page is one line in mkdocs.yml's nav, ``reference/MODULE.md``: its page is generated here
  as ``::: MODULE`` (mkdocstrings renders it from the docstrings), so adding a module is that one line.
- ``cli.md``, the command line: every command's ``--help``, rendered from its parser (``build_parser``), so
  that the options, their defaults and their help are the code's, never a copy of them.
- The files in ``benchmarks/results/`` are served as ``results/NAME``, so the pages link to the measurements
  where the benchmarks write them.
- The pages read on GitHub too, where nothing is generated: they link to the files themselves (a README section,
  a command's module, a result file), and ``on_page_markdown`` points those links at the site's own pages. A
  line ending in ``<!-- include README.md:NAME -->`` is a link on GitHub and the README's section NAME here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import sys
from pathlib import Path
from unittest import mock

from mkdocs.structure.files import File, Files, InclusionLevel

REFERENCE = "reference/"
COMMAND_LINE = "cli.md"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HELP_WIDTH = "110"  # argparse wraps --help to the terminal's width: a fixed one, so the page is the same anywhere
INTRO = ("Every command's `--help`, generated from its parser when the site is built. `gist-mining COMMAND` (the "
         "console script) and `python -m MODULE` run the same parser; the task pages explain the options that need "
         "more than a line. Each option is also a field of a typed settings class for the "
         "[Python API](getting-started.md#from-python) (`gist_mining.api`), with the same default.\n")


INCLUDE = re.compile(r"^.*<!-- include (\S+) -->$", re.M)
SOURCE_LINK = re.compile(r"\]\(\.\./((?:gist_mining|pipeline|train)/[\w/]+)\.py\)")
COMMAND_PAGES = {"pipeline.cli": COMMAND_LINE}  # the console script's module: the whole page


def nav_paths(nav) -> list[str]:
    """Every page path in a nav tree (lists of strings and one-key dicts)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [path for value in nav.values() for path in nav_paths(value)]
    if isinstance(nav, list):
        return [path for item in nav for path in nav_paths(item)]
    return []


def fenced(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```\n"


def command_line_page() -> str:
    """``gist-mining --help``, then each command's ``--help`` (and its subcommands'), as its parser prints it."""
    sys.path.insert(0, str(ROOT))  # the checkout's modules, also where the package is not installed
    from pipeline import cli

    with mock.patch.dict(os.environ, {"COLUMNS": HELP_WIDTH}):
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), contextlib.suppress(SystemExit):
            cli.main(["--help"])
        page = ["# Command line\n", INTRO, "## gist-mining {#gist-mining}\n", fenced(shown.getvalue())]
        for name, module in cli.COMMANDS.items():
            parser = importlib.import_module(module).build_parser(f"python -m {module}")
            page += [f"## gist-mining {name} {{#{name}}}\n", f"Also `python -m {module}`.\n", fenced(parser.format_help())]
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for sub, subparser in action.choices.items():
                        page += [f"### gist-mining {name} {sub} {{#{name}-{sub}}}\n", fenced(subparser.format_help())]
    return "\n".join(page)


def on_files(files: Files, config) -> Files:
    for path in nav_paths(config.nav):
        if path.startswith(REFERENCE) and files.get_file_from_path(path) is None:
            module = path.removeprefix(REFERENCE).removesuffix(".md")
            files.append(File.generated(config, path, content=f"# `{module}`\n\n::: {module}\n"))
    files.append(File.generated(config, COMMAND_LINE, content=command_line_page()))
    for result in sorted(RESULTS.iterdir()):
        # Linked from the pages, not listed in the nav: a result file is not a chapter of its own.
        files.append(File.generated(config, f"results/{result.name}", abs_src_path=str(result),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def site_link(module: str, commands: dict[str, str], references: set[str]) -> str:
    """Where the site shows a module a page links to: a command's section of the command-line page, else its
    API reference page."""
    if module in COMMAND_PAGES:
        return COMMAND_PAGES[module]
    if module in commands:
        return f"{COMMAND_LINE}#{commands[module]}"
    if module in references:
        return f"{REFERENCE}{module}.md"
    raise ValueError(f"a page links to {module}, which has no page on the site")


def on_page_markdown(markdown: str, page, config, files) -> str:
    from pipeline import cli

    commands = {module: name for name, module in cli.COMMANDS.items()}
    references = {p.removeprefix(REFERENCE).removesuffix(".md") for p in nav_paths(config.nav) if p.startswith(REFERENCE)}
    markdown = INCLUDE.sub(lambda m: f'--8<-- "{m.group(1)}"', markdown)
    markdown = markdown.replace("](../benchmarks/results/", "](results/")
    return SOURCE_LINK.sub(lambda m: f"]({site_link(m.group(1).replace('/', '.'), commands, references)})", markdown)
