"""`tuneforge board`: flags, the bind rule, then the UI (board/app.py). The bind rule is checked before gradio loads,
so a refused host costs nothing and never starts a server."""

import argparse

from tuneforge import TuneforgeError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"takes a whole number 1-65535 (got {text})")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge board", description=(
        "The web UI: build a run config, start runs (detached `tuneforge train` processes that outlive the page and "
        "the Board), follow, compare and stop them."))
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; anything but loopback needs --auth or --auth-file")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASS", help="one login (visible in the process list: prefer --auth-file)")
    p.add_argument("--auth-file", metavar="FILE", help="logins, one user:password a line (# comments allowed)")
    p.add_argument("--runs-dir", default="saves/board", help="folder of the Board's runs, one subfolder each (default saves/board)")
    p.add_argument("--policy", choices=("queue", "refuse"), default="queue",
                   help="a run started while another is active: queue it (default) or refuse it")
    return p


def cmd_board(args: list[str]) -> int:
    """Parse the flags, check the bind rule, then launch the UI; returns the exit code."""
    from tuneforge.board.auth import check_bind, parse_auth

    ns = parser().parse_args(args)
    auth = parse_auth(ns.auth, ns.auth_file)
    check_bind(ns.host, auth)
    from tuneforge.board.jobs import Runs

    runs = Runs(ns.runs_dir, policy=ns.policy)
    try:
        from tuneforge.board.app import launch
    except ModuleNotFoundError as e:
        if e.name == "gradio":
            raise TuneforgeError("the Board needs gradio: pip install 'tuneforge[board]'") from None
        if e.name == "tuneforge.board.app":
            raise TuneforgeError("this install has no Board UI (tuneforge/board/app.py is missing)") from None
        raise
    return launch(host=ns.host, port=ns.port, auth=auth, runs=runs)
