"""The documentation: the site builds strictly (its command-line page generated from the parsers), strict building
catches what it should, every option the pages and the README write exists in the command it is written for, and
the README's quick start runs as written (on the tiny models, in place of the bundled guide and student)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_pairs, run_stage

ROOT = Path(__file__).resolve().parents[1]
DOCS_PACKAGES = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings_handlers.python": "mkdocstrings-python"}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


MISSING = [package for module, package in DOCS_PACKAGES.items() if not installed(module)]
needs_mkdocs = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed: pip install -e '.[docs]'")


def build(site: Path, docs_dir: Path | None = None) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` from the repository root, as CI runs it; another docs_dir through INHERIT."""
    config = ROOT / "mkdocs.yml"
    if docs_dir is not None:
        config = site.parent / "mkdocs.yml"
        config.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {docs_dir}\nhooks: [{ROOT / 'docs' / 'hooks.py'}]\n")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@needs_mkdocs
def test_site_builds_strictly_with_the_api_reference(tmp_path):
    result = build(tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    mining = (tmp_path / "site" / "reference" / "gist_mining.mining.rules" / "index.html").read_text()
    margin = (tmp_path / "site" / "reference" / "gist_mining.margin" / "index.html").read_text()
    assert "MiningRules" in mining and "false_negative_threshold" in margin  # rendered from the docstrings
    assert (tmp_path / "site" / "results" / "guide_ablation_runs.jsonl").is_file()  # linked from the pages
    from test_cli import PARSERS  # the command-line page holds every option of every command, as its parser has it

    page = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert [(stage, flag) for stage, parser in PARSERS.items() for action in parser._actions
            for flag in action.option_strings if flag not in page] == []
    assert [parser.prog for parser in PARSERS.values() if f"usage: {parser.prog} [-h]" not in page] == []
    assert "usage: gist-mining [-h] [--version]" in page


@needs_mkdocs
@pytest.mark.parametrize("page, errors", [
    ("See [the rules](no-such-page.md) and [their test](mining.md#no-such-section).", ["no-such-page.md", "no-such-section"]),
    ("::: gist_mining.no_such_module", ["gist_mining.no_such_module"]),  # mkdocstrings stops at the first
])
def test_strict_build_fails_on_a_broken_link_or_reference(tmp_path, page, errors):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + f"\n{page}\n")
    result = build(tmp_path / "site", docs)
    assert result.returncode != 0, result.stderr[-3000:]
    assert all(error in result.stderr for error in errors), result.stderr[-3000:]


def test_readme_links_point_at_files_that_exist():  # the site's links are mkdocs's to check; the README's are not
    targets = re.findall(r"\]\(([^)#]+)[^)]*\)", (ROOT / "README.md").read_text())
    local = [target for target in targets if "://" not in target]
    assert local and [target for target in local if not (ROOT / target).exists()] == []


def readme_quickstart() -> tuple[list[str], str]:
    """The quick start's shell commands and its Python block, as the README shows them."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("[start:quickstart]")[1].split("[end:quickstart]")[0]
    shell, python = re.findall(r"```(?:bash|python)\n(.*?)```", section, re.S)
    commands = [line.split("#")[0].strip() for line in shell.splitlines() if line.strip()]
    return commands, python


def test_readme_quickstart_runs_as_written(tiny_guide, tiny_model, tmp_path, monkeypatch, capsys):
    make_pairs(40).write_parquet(tmp_path / "pairs.parquet")
    monkeypatch.chdir(tmp_path)  # the commands' relative paths: pairs.parquet, runs/mine, models/mine
    commands, python = readme_quickstart()
    models = {"pipeline.embed": ["--guide", tiny_guide], "train.run": ["--student", tiny_model]}  # bundled: too big
    assert [shlex.split(c)[:3] for c in commands] == [["python", "-m", m] for m in ("pipeline.embed", "pipeline.mask",
                                                                                    "train.run")]
    for command in commands:
        module = shlex.split(command)[2]
        assert run_stage(importlib.import_module(module), *shlex.split(command)[3:], *models.get(module, [])) == 0, command
    assert (tmp_path / "models" / "mine" / "config_sentence_transformers.json").is_file()
    capsys.readouterr()
    exec(compile(python, "README.md", "exec"), {})
    shown = capsys.readouterr().out
    pairs = make_pairs(40)
    assert "negatives" in shown and "false_negatives" in shown
    assert any(f"{q} -> {p}" in shown for q, p in zip(pairs["query"], pairs["positive"]))  # a real anchor's texts


# Options of the other tools the pages show, with the tool: not this project's to check.
OTHER_TOOLS = {"--nproc-per-node": "torchrun", "--nnodes": "torchrun", "--array": "sbatch", "--wrap": "sbatch",
               "--no-deps": "pip", "--require-hashes": "pip", "--index-url": "pip", "--local-dir": "hf download", "--exclude": "hf download",
               "--repo-type": "hf download", "--strict": "mkdocs build", "--head": "ray start", "--address": "ray start"}
# A command as the pages write it: gist-mining COMMAND, (python|torchrun ...) -m MODULE or a bare MODULE, a
# benchmark (-m benchmarks.NAME), a script.
COMMAND = re.compile(r"gist-mining (\w+)|\b(pipeline\.\w+|train\.run)\b|-m (benchmarks\.\w+)|python ((?:tests|data)/\w+\.py)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def documented_flags() -> list[tuple[str, int, str | None, str]]:
    """(page, line, command or None, flag) for every --flag in README.md and docs/*.md. A flag belongs to the
    command it follows on its line (continuations joined), up to a backtick, a comment or the next command."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            following = number  # a command continued on the lines below: joined here, blanked there
            while line.endswith("\\") and following < len(lines):
                line, lines[following] = line[:-1] + " " + lines[following], ""
                following += 1
            prose, end = line, len(line)
            for match in reversed(list(COMMAND.finditer(line))):  # from the right: a command ends at the next
                segment = re.split(r"`| #", line[match.end():end], maxsplit=1)[0]
                command = match.group(1) or match.group(2) or match.group(3) or match.group(4)
                found += [(page.name, number, command, flag) for flag in FLAG.findall(segment)]
                stop = match.end() + len(segment)
                prose, end = prose[:match.start()] + " " * (stop - match.start()) + prose[stop:], match.start()
            found += [(page.name, number, None, flag) for flag in FLAG.findall(prose)]
    return found


def command_flags() -> dict[str, set[str]]:
    """Each command's options, by the names the pages use for it: its module, its gist-mining name, a script (a
    benchmark by its file and its module)."""
    from test_cli import PARSERS

    from pipeline.cli import COMMANDS

    flags = {}
    for stage, parser in PARSERS.items():
        name = stage.split()[0]  # "cache info", "cache prune": both are pipeline.cache's
        options = {flag for action in parser._actions for flag in action.option_strings}
        for key in (name, COMMANDS[name]):
            flags[key] = flags.get(key, set()) | options
    for script in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "data").glob("*.py")]:
        flags[str(script.relative_to(ROOT))] = set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", script.read_text()))
        flags[".".join(script.relative_to(ROOT).with_suffix("").parts)] = flags[str(script.relative_to(ROOT))]
    return flags


def test_every_documented_option_exists_in_its_command():
    from pipeline.cli import COMMANDS

    flags = command_flags()
    stages = set().union(*(flags[module] for module in COMMANDS.values())) | set(OTHER_TOOLS)
    prose = {}  # outside a command: any stage's option, or one of a script the page names
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        scripts = re.findall(r"(?:benchmarks|tests|data)/\w+\.py|benchmarks\.\w+", page.read_text())
        prose[page.name] = stages.union(*(flags.get(script, set()) for script in scripts))
    unknown = [(page, line, command, flag) for page, line, command, flag in documented_flags()
               if flag not in (flags.get(command, set()) if command else prose[page])]
    assert unknown == []


def test_source_pages_read_on_github():
    """The pages read where nothing is generated (GitHub): no raw snippet line, and every relative link reaches a
    file of the repository (docs/hooks.py points them at the site's own pages when it builds)."""
    broken = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        assert "--8<--" not in text, page.name
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", text):
            if "://" not in target and not (page.parent / target).exists():
                broken.append((page.name, target))
    assert broken == []
