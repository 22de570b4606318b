"""Credentials for restricted sources: environment variables, ``~/.netrc``, or a prompt.

A password is never printed, logged, written to a manifest or put in an error message:
:class:`Credentials` hides it in ``repr``/``str`` and registers it (and its Base64 Basic form)
with :mod:`data_fetch.redaction`, which scrubs it from any text we show.

Credentials are bound to one host: :meth:`Credentials.bound_to` gives a requests ``auth`` that
adds the ``Authorization`` header only to requests for that scheme, host and port, and only
over HTTPS (plain HTTP only to a loopback address, for tests, when explicitly allowed).
Environment variables belong to their own host (``$PHYSIONET_*`` to ``physionet.org``) just as a
``~/.netrc`` entry does.

>>> c = Credentials("ada", "s3cret", "environment")
>>> c
Credentials(username='ada', password='***', from='environment')
>>> redact("login failed for s3cret")
'login failed for ***'
"""
from __future__ import annotations

import getpass
import ipaddress
import logging
import netrc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase, _basic_auth_str

from data_fetch.redaction import redact, register_login

__all__ = ["Credentials", "CredentialsError", "InsecureTransportError", "HostBoundAuth",
           "check_transport", "get_credentials", "is_loopback", "redact"]

log = logging.getLogger("data_fetch")


class CredentialsError(RuntimeError):
    """No credentials could be found (and no prompt was possible)."""


class InsecureTransportError(CredentialsError):
    """A secret would travel over plain HTTP to a host that is not this machine."""


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(url: str, what: str, allow_http_loopback: bool = False) -> None:
    """Raise :class:`InsecureTransportError` unless ``url`` may carry a secret (``what``).

    HTTPS always may; plain HTTP only to a loopback host and only with
    ``allow_http_loopback`` (the tests' servers); anything else never.
    """
    parts = urlsplit(str(url))
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback(parts.hostname):
        if allow_http_loopback:
            return
        raise InsecureTransportError(
            f"refusing to send {what} over plain HTTP to {parts.hostname}; use https, or pass "
            "--allow-http-loopback (for a test server on this machine)")
    raise InsecureTransportError(f"refusing to send {what} over {parts.scheme or 'no'} scheme to "
                                 f"{parts.hostname or '?'}: only https:// addresses are allowed")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(str(url))
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class HostBoundAuth(AuthBase):
    """HTTP Basic auth that is added only to requests for one origin (scheme, host, port)."""

    def __init__(self, credentials: "Credentials", url: str):
        self._credentials = credentials
        self.origin = _origin(url)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if _origin(request.url or "") == self.origin:
            request.headers["Authorization"] = _basic_auth_str(self._credentials.username,
                                                               self._credentials.password)
        else:
            request.headers.pop("Authorization", None)
        return request

    def __repr__(self) -> str:
        scheme, host, port = self.origin
        return f"HostBoundAuth({self._credentials.username!r} for {scheme}://{host}:{port})"


@dataclass(frozen=True)
class Credentials:
    """A username and password; the password never shows in ``repr``, ``str`` or logs."""

    username: str
    password: str = field(repr=False)
    origin: str = "unknown"

    def __post_init__(self) -> None:
        register_login(self.username, self.password)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***', from={self.origin!r})"

    __str__ = __repr__

    def bound_to(self, url: str, allow_http_loopback: bool = False) -> HostBoundAuth:
        """A requests ``auth`` sending these credentials only to ``url``'s origin (HTTPS)."""
        check_transport(url, "credentials", allow_http_loopback)
        return HostBoundAuth(self, url)

    def redact(self, text: str) -> str:
        """``text`` with the password replaced by ``***``."""
        return redact(text, self.password)


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
                    env_host: str | None = None, interactive: bool | None = None,
                    netrc_file: str | Path | None = None) -> Credentials:
    """Find credentials for ``host``: ``$user_env``/``$password_env``, then ``~/.netrc``
    (``$NETRC`` overrides the path), then an interactive prompt when a terminal is attached.

    The environment variables belong to ``env_host`` (when given): for any other host they are
    ignored, so a mirror never receives them. ``account_hint`` says which account and
    agreement are needed; it goes into the error.
    """
    env_allowed = env_host is None or host.lower() == env_host.lower()
    found = (_from_env(user_env, password_env) if env_allowed else None) \
        or _from_netrc(host, netrc_file)
    if found:
        return found
    if not env_allowed and os.environ.get(user_env):
        log.warning("%s/%s are used only for %s, not for %s", user_env, password_env,
                    env_host, host)
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if interactive:
        return _from_prompt(host)
    env_part = (f"set {user_env} and {password_env}, or " if env_allowed
                else f"({user_env}/{password_env} are only sent to {env_host}) ")
    raise CredentialsError(
        f"no credentials for {host}. {account_hint} Then {env_part}"
        f"add 'machine {host} login USER password PASS' to ~/.netrc (chmod 600), "
        "or run in a terminal to be asked.")
