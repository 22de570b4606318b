"""One place that hides secrets in any text we show, log or write.

:func:`redact` is applied to every error message :mod:`data_fetch.__main__` prints and, through
:class:`RedactingFilter`, to every log record of ``data_fetch``, ``requests`` and ``urllib3``.
It removes

* secrets registered with :func:`register_secret` (passwords, their ``user:password`` Base64
  form, the query strings of signed URLs), wherever they appear;
* URL query strings (``?sig=...&se=...``) and user info (``https://user:pw@host``);
* ``Authorization`` header values (``Basic ...``, ``Bearer ...``) and ``token=``/``password=``
  style pairs.

>>> register_secret("s3cret")
>>> redact("login failed for s3cret")
'login failed for ***'
>>> redact("GET https://ada:pw@host.org/a.zip?sig=XYZ&se=1 -> 403")
'GET https://host.org/a.zip?<redacted> -> 403'
>>> redact('"GET /a.zip?sig=XYZ HTTP/1.1" 200')
'"GET /a.zip?<redacted> HTTP/1.1" 200'
>>> redact("Authorization: Basic YWRhOnB3")
'Authorization: ***'
"""
from __future__ import annotations

import base64
import logging
import re
import threading

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"]+@")
_QUERY = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?'\"]*)\?[^\s\"'<>]*")
_PATH_QUERY = re.compile(r"(?P<head>(?:^|[\s\"'(])/[^\s?\"']*)\?[^\s\"'<>]*")
_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+")
_SCHEME_TOKEN = re.compile(r"\b(?:Basic|Bearer|Token)\s+(?=[A-Za-z0-9+/=._~-]*[0-9=+/])"
                           r"[A-Za-z0-9+/=._~-]{8,}")
_PAIR = re.compile(r"(?i)\b(sig|signature|token|access_token|password|passwd|secret|"
                   r"x-amz-signature|x-amz-credential|x-goog-signature)=[^&\s\"']+")


def register_secret(*values: str | None) -> None:
    """Remember secrets (non-empty, 4+ characters) so :func:`redact` hides them everywhere."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= 4)


def register_login(username: str, password: str) -> None:
    """Register a password and the Base64 ``user:password`` an HTTP Basic header would carry."""
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    register_secret(password, basic)


def redact(text: object, *secrets: str | None) -> str:
    """``text`` with every known secret, URL query, user info and auth header hidden."""
    out = str(text)
    with _lock:
        known = sorted(_secrets | {s for s in secrets if s}, key=len, reverse=True)
    for secret in known:
        out = out.replace(secret, MASK)
    out = _USERINFO.sub(r"\g<scheme>", out)
    out = _QUERY.sub(r"\g<head>?<redacted>", out)
    out = _PATH_QUERY.sub(r"\g<head>?<redacted>", out)
    out = _HEADER.sub(rf"\g<1>{MASK}", out)
    out = _SCHEME_TOKEN.sub(MASK, out)
    return _PAIR.sub(lambda m: f"{m.group(1)}={MASK}", out)


class RedactingFilter(logging.Filter):
    """Pass every log record through :func:`redact` (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


LOGGERS = ("data_fetch", "data_fetch.download", "urllib3", "urllib3.connectionpool",
           "urllib3.connection", "urllib3.util.retry", "requests")


def install_log_filters(*handlers: logging.Handler) -> None:
    """Add :class:`RedactingFilter` to our and the HTTP libraries' loggers (and ``handlers``)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


install_log_filters()
