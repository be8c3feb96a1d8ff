"""The documentation: the site builds strictly, strict building catches what it should, and the README's quick
start runs as written (on the tiny models, in place of the bundled guide and student)."""

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
    mining = (tmp_path / "site" / "reference" / "gist_mining.mining" / "index.html").read_text()
    assert "MiningRules" in mining and "false_negative_threshold" in mining  # rendered from the docstrings
    assert (tmp_path / "site" / "results" / "guide_ablation_sections.txt").is_file()


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
    models = {"pipeline.embed": tiny_guide, "train.run": tiny_model}  # the bundled ones are too big for a test
    assert [shlex.split(c)[:3] for c in commands] == [["python", "-m", m] for m in ("pipeline.embed", "pipeline.mask",
                                                                                    "train.run")]
    for command in commands:
        module = shlex.split(command)[2]
        model = ["--model", models[module]] if module in models else []
        assert run_stage(importlib.import_module(module), *shlex.split(command)[3:], *model) == 0, command
    assert (tmp_path / "models" / "mine" / "config_sentence_transformers.json").is_file()
    capsys.readouterr()
    exec(compile(python, "README.md", "exec"), {})
    shown = capsys.readouterr().out
    pairs = make_pairs(40)
    assert "negatives" in shown and "false_negatives" in shown
    assert any(f"{q} -> {p}" in shown for q, p in zip(pairs["query"], pairs["positive"]))  # a real anchor's texts
