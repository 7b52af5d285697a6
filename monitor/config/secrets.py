"""Secrets and the files they come from.

What lives here: :func:`secret_or_file`, the one resolver of "a secret given
inline, or a secret file" used by every section that has one (Kafka SASL
password, webhook secrets, admin token, Redis password); :func:`check_file`,
the start-up check that a configured file exists; and :data:`SECRET_KEYS`, the
keys whose values are never echoed in error messages.

May import: the standard library and pydantic only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

__all__ = ["SECRET_KEYS", "check_file", "is_file", "secret_or_file"]

#: keys whose values are secrets: never echoed in error messages
SECRET_KEYS = frozenset({"secrets", "token", "password", "sasl_password"})


def is_file(path: Path) -> bool:
    """``path.is_file()``, False (not an exception) for impossible paths.

    >>> is_file(Path("/nonexistent/secret")), is_file(Path("bad\\0path"))
    (False, False)
    """
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def check_file(path: Path | None, key: str) -> None:
    """Raise ``ValueError`` naming ``key`` when ``path`` is set but is not a file.

    >>> check_file(None, "token_file")
    >>> check_file(Path("/nonexistent/token"), "token_file")
    Traceback (most recent call last):
    ValueError: token_file '/nonexistent/token' does not exist
    """
    if path is not None and not is_file(path):
        raise ValueError(f"{key} {str(path)!r} does not exist")


def secret_or_file(value: SecretStr | None, path: Path | None, key: str) -> str | None:
    """The secret: ``value`` when given, else the content of the file at ``path``
    (surrounding whitespace stripped), else None.

    The file is read on every call, so a rotated secret file is picked up by the
    next caller. A file that cannot be read raises ``OSError`` (the subclass of
    the cause, e.g. ``FileNotFoundError``) and one that is not text
    ``ValueError``, both naming ``key`` and the reason, never the content.

    >>> import tempfile
    >>> secret_or_file(SecretStr("hunter2"), None, "kafka.sasl_password")
    'hunter2'
    >>> secret_or_file(None, None, "admin.token") is None
    True
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "pw"
    ...     _ = path.write_text("s3cret\\n")
    ...     secret_or_file(None, path, "state.password_file")
    's3cret'
    >>> secret_or_file(None, Path("/nonexistent/pw"), "state.password_file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: [Errno 2] state.password_file: cannot read '/nonexistent/pw': No such...
    """
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        # OSError(errno, ...) is the matching subclass (FileNotFoundError, ...)
        raise OSError(exc.errno, f"{key}: cannot read {str(path)!r}: "
                                 f"{exc.strerror or type(exc).__name__}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{key}: {str(path)!r} is not text (byte {exc.start})") from None
