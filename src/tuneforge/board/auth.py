"""Who may open the Board: `--auth user:pass` or `--auth-file FILE` (one `user:password` a line), and the rule that a
Board bound beyond this machine (any host but loopback) needs one of them. No gradio here: checked before it loads."""

import ipaddress
import os

from tuneforge import TuneforgeError


def parse_auth(auth: str | None, auth_file: str | None) -> list[tuple[str, str]] | None:
    """The (user, password) pairs from --auth or --auth-file; None when neither is given.

    An auth file holds one `user:password` a line (the password may contain `:`); blank lines and lines starting
    with `#` are skipped.

    Raises:
        TuneforgeError: both flags given, a value without `user:password`, a missing or empty file (naming the flag
            and, for a file, the line; never echoing a password).
    """
    if auth is not None and auth_file is not None:
        raise TuneforgeError("give --auth or --auth-file, not both")
    if auth is not None:
        pair = _pair(auth)
        if pair is None:
            raise TuneforgeError("--auth takes user:password (a user name, a colon, a password; neither empty)")
        return [pair]
    if auth_file is None:
        return None
    if not os.path.isfile(auth_file):
        raise TuneforgeError(f"--auth-file `{auth_file}` does not exist; give a file with one user:password a line")
    pairs = []
    with open(auth_file, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            pair = _pair(text)
            if pair is None:
                raise TuneforgeError(f"--auth-file `{auth_file}` line {number}: expected user:password "
                                     f"(a user name, a colon, a password; neither empty)")
            pairs.append(pair)
    if not pairs:
        raise TuneforgeError(f"--auth-file `{auth_file}` has no user:password line")
    return pairs


def _pair(text: str) -> tuple[str, str] | None:
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        return None
    return user.strip(), password


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (brackets allowed: [::1])."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_bind(host: str, auth: list[tuple[str, str]] | None) -> None:
    """Refuse to serve the Board beyond this machine without a login.

    Raises:
        TuneforgeError: host is not loopback and auth is None, naming both ways out.
    """
    if auth is None and not is_loopback(host):
        raise TuneforgeError(f"--host {host} opens the Board (which starts training runs) to other machines; give "
                             f"--auth user:password or --auth-file FILE, or keep the default --host 127.0.0.1")
