"""Talking to the embedded broker as a Kafka client: readiness probe and topics.

What lives here: :func:`probe_kafka`, a minimal version-0 Kafka wire-protocol
client (``ApiVersions`` then ``Metadata``) that tells whether a broker is ready
and advertises the expected port, and :func:`create_topics`, explicit topic
creation with partition counts (checked with :func:`validate_topics`) through
aiokafka's admin client. :class:`monitor.sandbox.broker.EmbeddedBroker` uses
both.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

__all__ = ["create_topics", "describe_topic_error", "probe_kafka", "validate_topics"]

_API_VERSIONS_KEY: Final = 18
_METADATA_KEY: Final = 3
_CLIENT_ID: Final = b"driftgate-readiness"
_TOPIC_ALREADY_EXISTS: Final = 36


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _kafka_request(sock: socket.socket, api_key: int, correlation_id: int, body: bytes) -> bytes:
    """Send a version-0 Kafka request and return the response body after the correlation id."""
    header = struct.pack(">hhih", api_key, 0, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if size < 4:
        raise ConnectionError(f"malformed response of {size} bytes to api_key {api_key}")
    response = _recv_exact(sock, size)
    (got_id,) = struct.unpack_from(">i", response, 0)
    if got_id != correlation_id:
        raise ConnectionError(f"correlation id mismatch: sent {correlation_id}, got {got_id}")
    return response[4:]


def _advertised_ports(metadata_v0: bytes) -> set[int]:
    """Parse the broker list of a Metadata v0 response body and return the advertised ports."""
    (count,) = struct.unpack_from(">i", metadata_v0, 0)
    offset = 4
    ports: set[int] = set()
    for _ in range(count):
        _node_id, host_len = struct.unpack_from(">ih", metadata_v0, offset)
        offset += 6 + host_len
        (port,) = struct.unpack_from(">i", metadata_v0, offset)
        offset += 4
        ports.add(port)
    return ports


def probe_kafka(host: str, port: int, timeout_s: float) -> None:
    """Raise unless ``host:port`` answers ApiVersions and advertises itself in Metadata.

    Parameters
    ----------
    host, port
        Address of the broker.
    timeout_s : float
        Socket timeout for connect and each read.

    Raises
    ------
    OSError
        If the connection fails, times out or the responses are not as expected
        (``ConnectionError`` is a subclass of ``OSError``).
    struct.error
        If a response is truncated.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        versions = _kafka_request(sock, _API_VERSIONS_KEY, 1, b"")
        (error_code,) = struct.unpack_from(">h", versions, 0)
        if error_code != 0:
            raise ConnectionError(f"ApiVersions returned error code {error_code}")
        # Metadata v0 with an empty topic array: brokers plus all topics.
        metadata = _kafka_request(sock, _METADATA_KEY, 2, struct.pack(">i", 0))
        ports = _advertised_ports(metadata)
        if port not in ports:
            raise ConnectionError(f"broker advertises ports {sorted(ports)}, expected {port}")


def describe_topic_error(entry: tuple[object, ...]) -> str:
    """Format one ``(topic, error_code[, error_message])`` entry of a CreateTopics response.

    Examples
    --------
    >>> describe_topic_error(("t", 36, "exists"))
    "'t': error code 36 (topic already exists) - exists"
    """
    name, code = entry[0], entry[1]
    message = entry[2] if len(entry) > 2 else None
    text = f"{name!r}: error code {code}"
    if code == _TOPIC_ALREADY_EXISTS:
        text += " (topic already exists)"
    if message:
        text += f" - {message}"
    return text


def validate_topics(topics: object) -> dict[str, int]:
    """Check a ``{topic name: partition count}`` request and return it.

    Raises
    ------
    ValueError
        If ``topics`` is not a dict, a topic name is empty or a partition
        count is not an int >= 1.

    Examples
    --------
    >>> validate_topics({"t": 0})
    Traceback (most recent call last):
    ...
    ValueError: partition count for topic 't' must be an int >= 1, got 0
    """
    if not isinstance(topics, dict):
        raise ValueError(f"topics must be a dict of name to partition count, got {topics!r}")
    for name, partitions in topics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"topic name must be a non-empty str, got {name!r}")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(
                f"partition count for topic {name!r} must be an int >= 1, got {partitions!r}"
            )
    return topics


async def create_topics(bootstrap_servers: str, topics: dict[str, int]) -> None:
    """Create topics with the given partition counts (replication factor 1).

    Parameters
    ----------
    bootstrap_servers : str
        ``"HOST:PORT"`` of the broker.
    topics : dict of str to int
        Topic name to number of partitions, as checked by :func:`validate_topics`.

    Raises
    ------
    RuntimeError
        If the broker rejects a topic (including one that already exists) or
        reports a different partition count afterwards.
    """
    if not topics:
        return
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, client_id="driftgate-embedded-admin"
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, n, 1) for name, n in topics.items()]
        )
        errors = [
            describe_topic_error(entry) for entry in response.topic_errors if entry[1] != 0
        ]
        if errors:
            raise RuntimeError("broker rejected topic creation: " + "; ".join(errors))
        described = await admin.describe_topics(list(topics))
        actual = {d["topic"]: len(d["partitions"]) for d in described}
        wrong = {n: actual.get(n) for n, want in topics.items() if actual.get(n) != want}
        if wrong:
            raise RuntimeError(
                f"partition counts after creation differ: wanted "
                f"{ {n: topics[n] for n in wrong} }, broker reports {wrong}"
            )
    finally:
        await admin.close()
