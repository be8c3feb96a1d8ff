"""Inputs as the user names them: files, folders, globs and Hub datasets through the Hugging Face cache (``input_files``)."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path


from gist_mining.inputs.files import data_file, data_suffix
from gist_mining.inputs.problems import describe_error, file_error


@dataclass(frozen=True)
class HubSelection:
    """Which files of a Hub dataset an input takes (--input-subset, --input-split, --input-revision)."""

    split: str = "train"
    subset: str | None = None
    revision: str | None = None


HUB_PATHS = "hf://datasets/"


# owner/name, as the Hub spells dataset ids; a name ending like a data file is a missing local file instead.
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def input_files(given: str | Path, hub: HubSelection = HubSelection()) -> list[Path]:
    """The files an --input or --corpus names: a file, a dataset saved with save_to_disk, a folder of data files
    (Spark's or pyarrow's part files; hidden and ``_`` files such as _SUCCESS skipped), a glob of them, a Hub
    dataset id or an ``hf://datasets/OWNER/NAME[@REVISION]/PATH`` (``hub_files``); sorted."""
    path = Path(given)
    text = str(given)
    if text.startswith(HUB_PATHS) or (not path.exists() and _HUB_ID.fullmatch(text) and not data_suffix(path)):
        return hub_files(text, hub)
    if not path.exists() and glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if data_file(Path(p)) or Path(p).is_dir())
        if not files:
            raise file_error(path, "no file matches this pattern")
        return [f for match in files for f in input_files(match)]
    if not path.is_dir() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        return [path]
    files = sorted(p for p in path.rglob("*") if data_file(p) and not any(
        part.startswith((".", "_")) for part in p.relative_to(path).parts))
    if not files:
        raise file_error(path, "a directory, but neither a dataset saved with save_to_disk (no state.json) nor a "
                                "folder of .parquet, .jsonl or .csv files")
    return files


def hub_files(given: str, hub: HubSelection) -> list[Path]:
    """A Hub dataset's data files for one subset and split, through the standard Hugging Face cache (HF_HOME;
    HF_HUB_OFFLINE=1 serves it without asking the Hub). The split's files are those its dataset card's configs
    name, else those `datasets` finds by its naming conventions (data/train-00000-of-00001.parquet, ...)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if given.startswith(HUB_PATHS):  # hf://datasets/OWNER/NAME[@REVISION]/PATH
        owner, name, inner = (given.removeprefix(HUB_PATHS).split("/", 2) + ["", ""])[:3]
        repo, _, revision = f"{owner}/{name}".partition("@")
        revision = revision or hub.revision
    else:
        repo, inner, revision = given, "", hub.revision

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
            recipe = f"hf download {repo} --repo-type dataset" + (f" --revision {revision}" if revision else "")
            raise file_error(Path(given), f"a Hub dataset neither in the Hugging Face cache nor reachable "
                                           f"({describe_error(err)}); fetch it where the Hub is reachable with `{recipe}` "
                                           "and copy that machine's HF_HOME cache here") from err

    if inner:
        folder = fetch([inner, f"{inner}/**"])
        found = sorted({f for match in folder.glob(inner) for f in ([match] if match.is_file() else match.rglob("*"))
                        if data_file(f)})
    else:
        splits = _hub_splits(fetch(["README.md"]), hub.subset, given)
        if splits is None:  # no configs in the card: the data files themselves, named by convention
            splits = _conventional_splits(fetch(["*", "**/*"]), hub.subset, given)
        if hub.split not in splits:
            raise file_error(Path(given), f"no split {hub.split!r}{f' in subset {hub.subset!r}' if hub.subset else ''}"
                                           f" (has: {', '.join(splits) or 'none'}); choose one with --input-split")
        folder = fetch(splits[hub.split])
        found = sorted({p for pattern in splits[hub.split] for p in folder.glob(pattern) if data_file(p)})
    if not found:
        raise file_error(Path(given), "a Hub dataset without data files for this split (.parquet, .jsonl, .csv)")
    return found


def _hub_splits(folder: Path, subset: str | None, given: str) -> dict[str, list[str]] | None:
    """{split: file patterns} of a subset (None: the card's default) from a dataset card's configs; None when
    the card names none."""
    from datasets.data_files import sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    if not (folder / "README.md").exists():
        return None
    configs = MetadataConfigs.from_dataset_card_data(DatasetCard.load(folder / "README.md").data)
    if not configs:
        return None
    default = next((n for n, c in configs.items() if c.get("default")), "default" if "default" in configs else None)
    name = subset or default or (next(iter(configs)) if len(configs) == 1 else None)
    if name not in configs:
        raise file_error(Path(given), f"{'no subset ' + repr(subset) if subset else 'several subsets'} "
                                       f"(has: {', '.join(configs)}); choose one with --input-subset")
    return {split: list(patterns) for split, patterns in sanitize_patterns(configs[name].get("data_files", {})).items()}


def _conventional_splits(folder: Path, subset: str | None, given: str) -> dict[str, list[str]]:
    from datasets.data_files import EmptyDatasetError, get_data_patterns

    base = folder / subset if subset else folder
    if subset and not base.is_dir():
        raise file_error(Path(given), f"no subset {subset!r} (no folder of that name, and no configs in its card)")
    try:
        patterns = get_data_patterns(str(base))
    except EmptyDatasetError:
        return {}
    prefix = f"{subset}/" if subset else ""
    return {split: [prefix + p for p in found] for split, found in patterns.items()}
