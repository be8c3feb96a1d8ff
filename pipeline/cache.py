"""The embedding cache shared by work directories: what it holds, and pruning it.

    python -m pipeline.cache info [--cache-dir D]
    python -m pipeline.cache prune [--cache-dir D] (--all | --older-than DAYS | --model NAME_OR_KEY)

info lists each key (model, prompt, precision, max_seq_length, backend) with its files, entries and size,
then the guides' ONNX exports (gist_mining.onnx_backend, under $GIST_MINING_CACHE/onnx, else
~/.cache/gist-mining/onnx). prune removes every file, the files not used (written or read) for DAYS days,
or one model's files (the name it was run with, e.g. all-mpnet-base-v2 or a path, or a key folder's
prefix), and without --cache-dir the same of the ONNX exports; outdated exports (of an older format, which
no run reaches again, or without their record) go with any such prune.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gist_mining import cli, onnx_backend
from gist_mining.embed_cache import default_root, describe, folders, prune
from gist_mining.settings import HelpFormatter


def build_parser(prog: str = "python -m pipeline.cache") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="keys, files, entries and size")
    cut = commands.add_parser("prune", help="remove cache files")
    for sub in (info, cut):
        sub.add_argument("--cache-dir", type=Path, default=None,
                         help="default: $GIST_MINING_CACHE/embeddings, else ~/.cache/gist-mining/embeddings")
    which = cut.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every file")
    which.add_argument("--older-than", type=float, metavar="DAYS", help="files not written or read for DAYS days")
    which.add_argument("--model", metavar="NAME_OR_KEY",
                       help="one model's files and exports (its name, or a key prefix of 6 characters or more)")
    return parser


def when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "-"


def show(root: Path) -> None:
    rows = [describe(folder) for folder in folders(root)]
    print(f"{root}: {len(rows)} keys, {sum(r['files'] for r in rows)} files, {sum(r['entries'] for r in rows)} "
          f"entries, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB")
    for r in rows:
        unreadable = f", {r['unreadable']} unreadable" if r["unreadable"] else ""
        print(f"  {r['key'][:12]}  {r['name']}  prompt={r['prompt']!r}  {r['precision']}  max_seq_length="
              f"{r['max_seq_length']}  {r['backend']}: {r['files']} files, {r['entries']} entries{unreadable}, "
              f"{r['bytes'] / 2**20:.1f} MiB, last used {when(r['last_used'])}")
    exports = onnx_backend.describe_exports()
    print(f"{onnx_backend.exports_root()}: {len(exports)} ONNX exports, {sum(r['bytes'] for r in exports) / 2**20:.1f} MiB")
    for r in exports:
        outdated = f", outdated (format {r['format']}): any prune removes it" if r["outdated"] else ""
        model = r["name"] or r["model"] or "(model not recorded)"
        print(f"  {r['key'][:12]}  {model}: {r['bytes'] / 2**20:.1f} MiB, last used {when(r['last_used'])}{outdated}")


def main(argv=None, prog: str = "python -m pipeline.cache") -> None:
    args = build_parser(prog).parse_args(argv)
    root = args.cache_dir or default_root()
    if args.command == "info":
        show(root)
        return
    which = dict(everything=args.all, older_than_days=args.older_than, model=args.model)
    files, size = prune(root, **which)
    print(f"{root}: removed {files} files, {size / 2**20:.1f} MiB")
    if args.cache_dir is not None:  # names one embedding cache; the exports live beside the default one
        print(f"{onnx_backend.exports_root()}: ONNX exports left as they are (prune without --cache-dir for them)")
        return
    exports, size, failed = onnx_backend.prune_exports(**which)
    print(f"{onnx_backend.exports_root()}: removed {exports} ONNX exports, {size / 2**20:.1f} MiB"
          + (f"; {failed} could not be removed (permissions?)" if failed else ""))


if __name__ == "__main__":
    cli.run(main)
