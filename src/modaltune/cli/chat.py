"""`modaltune chat`: a multi-turn conversation with a chat model in the terminal.

Each line is a user turn; ``/image PATH`` attaches an image to the next turn, ``/reset`` starts
over, ``/quit`` (or end of input) leaves. Reads stdin, so a conversation can be piped in.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from modaltune.cli import app, console
from modaltune.cli.options import config_options
from modaltune.errors import DataError

HELP = "commands: /image PATH (attach an image to your next message), /reset, /quit"


@app.command()
@config_options(only=("num_beams", "max_new_tokens", "temperature"))
def chat(
    run_or_model: str = typer.Argument(..., help="run directory, its model/ folder, or a base chat model"),
    image: Optional[list[str]] = typer.Option(None, help="image(s) for the first message (repeat for several)"),
    system: Optional[str] = typer.Option(None, help="a system prompt for the whole conversation"),
    **flags: Any,
) -> None:
    """Chat with a model in the terminal; the history is kept, and any turn can bring images."""
    from modaltune.chat_session import open_chat

    session = open_chat(run_or_model, system=system, max_new_tokens=flags.get("max_new_tokens"),
                        num_beams=flags.get("num_beams"), temperature=flags.get("temperature"))
    converse(session, list(image or []), interactive=sys.stdin.isatty())


def converse(session: Any, pending: list[str], *, interactive: bool) -> None:
    """Read turns from stdin until /quit or end of input; answers go to stdout, one per turn."""
    if interactive:
        console.print(HELP)
    while True:
        if interactive:
            console.print("[bold]you>[/] ", end="")
        line = sys.stdin.readline()
        if not line:
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            session.reset()
            pending = []
            console.print("(conversation reset)")
            continue
        if text.startswith("/image"):
            path = text[len("/image"):].strip()
            if not path:
                console.print("usage: /image PATH")
                continue
            pending.append(path)
            continue
        if text.startswith("/"):
            console.print(f"unknown command {text.split()[0]}; {HELP}")
            continue
        try:
            answer = session.ask(text, pending)
        except DataError as exc:  # a bad image or empty turn: say so and keep the conversation
            console.print(f"[red]error:[/] {exc}", highlight=False)
            pending = []
            continue
        pending = []
        print(answer, flush=True)
