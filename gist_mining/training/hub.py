"""train.run --push-to-hub: the output folder (model, card, record; not the checkpoints) to a Hugging Face Hub
model repository, through huggingface_hub (its endpoint, token and offline mode as configured there)."""

from __future__ import annotations

from pathlib import Path

from gist_mining.errors import UsageError


def check_can_push(repo_id: str) -> None:
    """Before training: a push that cannot happen is refused now, not after the run."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can reach the Hub; unset it, "
                         "or push later with `huggingface-cli upload`")
    if repo_id.count("/") != 1:
        raise UsageError(f"--push-to-hub {repo_id!r}: give the repository as OWNER/NAME")


def push(out: Path, repo_id: str) -> str:
    """Upload ``out`` to the model repository ``repo_id`` (created, private, if missing); the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)
        commit = api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model",
                                   commit_message="gist-mining: train.run", ignore_patterns=["checkpoints/*", "*.tmp*"])
    except (HfHubHTTPError, OSError) as failed:
        raise UsageError(f"--push-to-hub {repo_id}: {str(failed).splitlines()[0]}; the model stays in {out}")
    return commit.commit_url
