"""Loopback addresses and free TCP ports for the sandbox and the tests.

What lives here: :func:`free_port` (a TCP port that was free a moment ago), the
one such helper of the code base, used by the embedded broker, the local
Redis, the demo, the tests and the benchmarks; and :func:`validate_host`, the
check of a listen address shared by them.
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "validate_host"]


def validate_host(host: object) -> str:
    """Return ``host`` if it is a usable hostname or IPv4 address.

    Parameters
    ----------
    host : object
        The candidate address.

    Returns
    -------
    str
        ``host`` itself.

    Raises
    ------
    ValueError
        If ``host`` is not a non-empty str without whitespace, or is an IPv6
        literal (contains ``':'``).

    Examples
    --------
    >>> validate_host("127.0.0.1")
    '127.0.0.1'
    >>> validate_host("::1")
    Traceback (most recent call last):
    ...
    ValueError: host must not contain ':' (IPv6 literals are unsupported), got '::1'
    """
    if not isinstance(host, str) or not host or any(ch.isspace() for ch in host):
        raise ValueError(f"host must be a non-empty hostname or IPv4 address, got {host!r}")
    if ":" in host:
        raise ValueError(f"host must not contain ':' (IPv6 literals are unsupported), got {host!r}")
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free at the time of the call.

    The port is found by binding to port 0 and closing the socket again, so
    another process could grab it before the caller binds it; callers that can
    retry (like :meth:`monitor.sandbox.broker.EmbeddedBroker.start`) should.

    Parameters
    ----------
    host : str, default "127.0.0.1"
        Local address to bind to.

    Returns
    -------
    int
        A port number in ``1..65535``.

    Raises
    ------
    ValueError
        If ``host`` is empty, contains whitespace or is an IPv6 literal.
    OSError
        If ``host`` cannot be bound.

    Examples
    --------
    >>> 0 < free_port() < 65536
    True
    """
    validate_host(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port
