"""Credentials for restricted sources: environment variables, ``~/.netrc``, or a prompt.

A password is never printed, logged, written to a manifest or put in an error message:
:class:`Credentials` hides it in ``repr``/``str``, and :func:`redact` scrubs it from any text
we show.

>>> c = Credentials("ada", "s3cret", "environment")
>>> c
Credentials(username='ada', password='***', from='environment')
>>> redact("login failed for s3cret", c.password)
'login failed for ***'
"""
from __future__ import annotations

import getpass
import netrc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests


class CredentialsError(RuntimeError):
    """No credentials could be found (and no prompt was possible)."""


@dataclass(frozen=True)
class Credentials:
    """A username and password; the password never shows in ``repr``, ``str`` or logs."""

    username: str
    password: str = field(repr=False)
    origin: str = "unknown"

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***', from={self.origin!r})"

    __str__ = __repr__

    def auth(self) -> requests.auth.HTTPBasicAuth:
        """HTTP Basic auth for :mod:`requests` (sent only to the host that asked for it)."""
        return requests.auth.HTTPBasicAuth(self.username, self.password)

    def redact(self, text: str) -> str:
        """``text`` with the password replaced by ``***``."""
        return redact(text, self.password)


def redact(text: str, *secrets: str | None) -> str:
    """Replace every non-empty secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _from_env(user_env: str, password_env: str) -> Credentials | None:
    user, password = os.environ.get(user_env), os.environ.get(password_env)
    if user and password:
        return Credentials(user, password, "environment")
    return None


def _from_netrc(host: str, netrc_file: str | Path | None) -> Credentials | None:
    path = Path(netrc_file or os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    if not path.exists():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as err:
        # the parse error's message can quote the file: say only where it is
        raise CredentialsError(f"could not read {path} ({type(err).__name__}); "
                               "check its format (machine HOST login USER password PASS)") from None
    if entry and entry[0] and entry[2]:
        return Credentials(entry[0], entry[2], "netrc")
    return None


def _from_prompt(host: str) -> Credentials:
    print(f"Log in to {host} (the password is not shown and not stored).", file=sys.stderr)
    user = input(f"{host} username: ").strip()
    password = getpass.getpass(f"{host} password: ")
    if not user or not password:
        raise CredentialsError(f"no username or password entered for {host}")
    return Credentials(user, password, "prompt")


def get_credentials(host: str, *, user_env: str, password_env: str, account_hint: str,
                    interactive: bool | None = None,
                    netrc_file: str | Path | None = None) -> Credentials:
    """Find credentials for ``host``: ``$user_env``/``$password_env``, then ``~/.netrc``
    (``$NETRC`` overrides the path), then an interactive prompt when a terminal is attached.

    ``account_hint`` says which account and agreement are needed; it goes into the error.
    """
    found = _from_env(user_env, password_env) or _from_netrc(host, netrc_file)
    if found:
        return found
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if interactive:
        return _from_prompt(host)
    raise CredentialsError(
        f"no credentials for {host}. {account_hint} Then set {user_env} and {password_env}, "
        f"or add 'machine {host} login USER password PASS' to ~/.netrc (chmod 600), "
        "or run in a terminal to be asked.")
