"""MkDocs hook: pages made at build time, so that nothing in docs/ copies what the code or a result file owns.

- Each API reference page is one line in mkdocs.yml's nav, ``reference/MODULE.md``: its page is generated here
  as ``::: MODULE`` (mkdocstrings renders it from the docstrings), so adding a module is that one line.
- The files in ``benchmarks/results/`` are served as ``results/NAME``, so the pages link to the measurements
  where the benchmarks write them.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

REFERENCE = "reference/"
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def nav_paths(nav) -> list[str]:
    """Every page path in a nav tree (lists of strings and one-key dicts)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [path for value in nav.values() for path in nav_paths(value)]
    if isinstance(nav, list):
        return [path for item in nav for path in nav_paths(item)]
    return []


def on_files(files: Files, config) -> Files:
    for path in nav_paths(config.nav):
        if path.startswith(REFERENCE) and files.get_file_from_path(path) is None:
            module = path.removeprefix(REFERENCE).removesuffix(".md")
            files.append(File.generated(config, path, content=f"# `{module}`\n\n::: {module}\n"))
    for result in sorted(RESULTS.iterdir()):
        # Linked from the pages, not listed in the nav: a result file is not a chapter of its own.
        files.append(File.generated(config, f"results/{result.name}", abs_src_path=str(result),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files
