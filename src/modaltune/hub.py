"""Pushing a run's ``model/`` (weights, processor, ``modaltune.json``, model card) to the Hugging Face hub.

Through ``huggingface_hub``'s ``create_repo`` + ``upload_folder``. Offline (``HF_HUB_OFFLINE=1``) or
without a network, or refused by the hub (no token, no write access), it is a `HubError` saying
which and what to do, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modaltune.errors import ModaltuneError
from modaltune.run import resolve_model_dir

#: The HTTP stacks huggingface_hub runs on (httpx, or its httpx2 fork); their transport errors are no OSErrors.
_HTTP_LIBRARIES = ("httpx", "httpcore", "requests", "urllib3")


class HubError(ModaltuneError):
    """The hub cannot be reached or refused the upload."""


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def check_can_push(repo_id: str) -> None:
    """`HubError` now, before a run trains, when its push could not happen: offline, or a malformed id."""
    from huggingface_hub.utils import validate_repo_id

    if _offline():
        raise HubError(f"--push-to-hub {repo_id}: offline mode is on (HF_HUB_OFFLINE=1), so the model could not "
                       "be pushed; unset it, or train without --push-to-hub and run modaltune push RUN REPO later")
    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise HubError(f"--push-to-hub {repo_id!r} is not a hub repository id (user-or-org/name): "
                       f"{_first_line(exc)}") from None
    if "/" not in repo_id:
        raise HubError(f"--push-to-hub {repo_id!r}: name the owner too (user-or-org/name)")


def push(run_or_model: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
         commit_message: str | None = None, endpoint: str | None = None) -> str:
    """Upload the model folder of ``run_or_model`` to the hub repository ``repo_id`` (created if
    needed); returns the URL of the commit."""
    folder = resolve_model_dir(run_or_model)
    if not (folder / "config.json").is_file():
        raise ModaltuneError(f"{run_or_model} holds no saved model (no config.json in {folder}): push a run "
                             "directory whose training finished, or its model/ folder")
    if _offline():
        raise HubError(f"cannot push to the hub: offline mode is on (HF_HUB_OFFLINE=1). Unset it on a machine "
                       f"with network access and run: modaltune push {run_or_model} {repo_id}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    where = endpoint or "the hub"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info: Any = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                      commit_message=commit_message or f"modaltune: upload {folder.parent.name}")
    except OfflineModeIsEnabled as exc:
        raise HubError(f"cannot push to the hub: offline mode is on ({exc})") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = (" Log in with `hf auth login` or pass --token (a token with write access)."
                if status in (401, 403) else "")
        raise HubError(f"{where} refused the upload to {repo_id} (HTTP {status}): {_first_line(exc)}.{hint}") from None
    except ValueError as exc:  # HFValidationError: a malformed repository id
        raise HubError(f"{repo_id!r} is not a valid hub repository id (user-or-org/name): {_first_line(exc)}") from None
    except (OSError, ConnectionError) as exc:
        raise HubError(f"cannot reach {where} to push {repo_id}: {_first_line(exc)}. Check the network "
                       "(or a proxy), then run modaltune push again") from None
    except Exception as exc:
        if any(c.__module__.startswith(_HTTP_LIBRARIES) for c in type(exc).__mro__):
            raise HubError(f"cannot reach {where} to push {repo_id}: {type(exc).__name__}: {_first_line(exc)}. "
                           "Check the network (or a proxy), then run modaltune push again") from None
        raise
    return str(getattr(info, "commit_url", info))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
