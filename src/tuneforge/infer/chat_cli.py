"""`tuneforge chat`: a terminal chat with streaming replies, multi-turn history and a system prompt.

Commands: /clear forgets the conversation, /system TEXT sets the system prompt, /exit (or end of input) quits.
"""

import sys

HELP = "commands: /clear (new conversation), /system TEXT (set the system prompt), /exit"


def run(engine, settings, stdin=None, stdout=None) -> int:
    """Chat over `stdin`/`stdout` until /exit or end of input."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin.isatty()
    system = engine.default_system
    history: list[dict] = []
    print(f"tuneforge chat with {engine.name}. {HELP}", file=stdout, flush=True)
    while True:
        if interactive:
            print("\nUser: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/clear":
            history = []
            print("[history cleared]", file=stdout, flush=True)
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history = []
            print(f"[system prompt {'set' if system else 'removed'}; history cleared]", file=stdout, flush=True)
            continue
        if text.startswith("/"):
            print(f"[unknown command {text.split()[0]}; {HELP}]", file=stdout, flush=True)
            continue
        if not interactive:
            print(f"User: {text}", file=stdout, flush=True)
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        print("Assistant: ", end="", file=stdout, flush=True)
        reply = ""
        for piece in engine.stream(messages, settings):
            reply += piece
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout, flush=True)
        history.append({"role": "assistant", "content": reply.strip()})
    return 0
