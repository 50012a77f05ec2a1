"""Upload an exported adapter folder to the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

from pvera_bench.core.errors import UserError


def push_to_hub(folder: Path, repo_id: str, endpoint: str | None = None, token: str | None = None) -> str:
    """Upload ``folder`` to the hub model repository ``repo_id`` (created if needed); returns its URL.

    Args:
        endpoint, token: as ``huggingface_hub.HfApi`` takes them (None: ``HF_ENDPOINT``, the logged-in token).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, HTTPError

    try:
        api = HfApi(endpoint=endpoint, token=token)
        url = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="PEFT adapter from pvera_bench")
    except (OSError, HTTPError, HFValidationError) as error:  # offline, unreachable, no token, bad id, refused
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"cannot push {folder} to the hub as {repo_id} ({type(error).__name__}: {reason}); the export is in "
            f"{folder}: upload it from a machine with network access after `hf auth login`"
        ) from None
    return str(url)
