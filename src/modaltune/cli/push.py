"""`modaltune push`: upload a run's model/ (weights, processor, modaltune.json, model card) to the hub."""

from __future__ import annotations

from typing import Optional

import typer

from modaltune.cli import app, console


@app.command()
def push(
    run_or_model: str = typer.Argument(..., help="run directory or its model/ folder"),
    repo: str = typer.Argument(..., help="hub repository to upload to, user-or-org/name (created if needed)"),
    private: bool = typer.Option(False, "--private", help="create the repository private"),
    token: Optional[str] = typer.Option(None, help="hub token with write access (default: the logged-in one)"),
    message: Optional[str] = typer.Option(None, help="commit message"),
) -> None:
    """Push a trained model to the Hugging Face hub (fails with a message when offline)."""
    from modaltune.hub import push as push_to_hub

    url = push_to_hub(run_or_model, repo, private=private, token=token, commit_message=message)
    console.print(f"pushed to {url}")
