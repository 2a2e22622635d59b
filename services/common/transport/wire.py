"""Framing for the stream-socket carriers (TCP and the shm control socket).

A message is ``b"SST1"`` + a 4-byte big-endian length + that many bytes of JSON. Bulk bytes follow a
``{"ok": true}`` reply raw, exactly the requested ranges in order, so the reader ``recv_into``s them
straight into its destination.

Sockets stay in blocking mode (so ``MSG_WAITALL`` fills a whole chunk in one system call, with the
GIL released) and get their timeouts from the kernel (``SO_RCVTIMEO`` / ``SO_SNDTIMEO``), set before
each call from the caller's deadline: every wait is bounded and nothing polls.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from services.common.transport.errors import (
    PeerDisconnected,
    ProtocolError,
    TransferError,
    TransferTimeout,
    error_from_wire,
)
from services.common.transport.meta import ByteRange

MAGIC = b"SST1"
_HEADER = struct.Struct("!4sI")
MAX_MESSAGE_BYTES = 16 << 20
"""Bounds a control message (a read of 100k chunks is ~2 MiB of JSON); anything larger is a bug or
not one of ours."""


def _set_timeout(sock: socket.socket, option: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TransferTimeout("deadline passed")
    seconds = int(remaining)
    # A zero timeval means "wait forever" to the kernel; never send that.
    micros = max(int((remaining - seconds) * 1e6), 1 if seconds == 0 else 0)
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", seconds, micros))


def recv_exact(sock: socket.socket, view: memoryview, deadline: float) -> None:
    """Fill ``view`` from ``sock``; :class:`PeerDisconnected` on EOF, :class:`TransferTimeout` late."""
    wanted = len(view)
    got = 0
    while got < wanted:
        _set_timeout(sock, socket.SO_RCVTIMEO, deadline)
        try:
            n = sock.recv_into(view[got:], wanted - got, socket.MSG_WAITALL)
        except BlockingIOError:
            continue  # SO_RCVTIMEO fired; the next _set_timeout decides whether time is up
        except OSError as exc:
            raise PeerDisconnected(f"connection lost after {got} of {wanted} bytes: {exc}") from exc
        if n == 0:
            raise PeerDisconnected(f"peer closed the connection after {got} of {wanted} bytes")
        got += n


def send_all(sock: socket.socket, data: memoryview | bytes, deadline: float) -> None:
    """``sendall`` bounded by ``deadline``."""
    _set_timeout(sock, socket.SO_SNDTIMEO, deadline)
    try:
        sock.sendall(data)
    except BlockingIOError as exc:
        raise TransferTimeout("peer stopped reading") from exc
    except OSError as exc:
        raise PeerDisconnected(f"connection lost while sending: {exc}") from exc


def encode(message: dict[str, Any]) -> bytes:
    """One framed message."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(MAGIC, len(payload)) + payload


def send_message(sock: socket.socket, message: dict[str, Any], deadline: float, fds: Sequence[int] = ()) -> None:
    """Send one framed message, with file descriptors attached if given (Unix sockets only)."""
    data = encode(message)
    if not fds:
        send_all(sock, data, deadline)
        return
    _set_timeout(sock, socket.SO_SNDTIMEO, deadline)
    try:
        sent = socket.send_fds(sock, [data], list(fds))
    except OSError as exc:
        raise PeerDisconnected(f"connection lost while sending: {exc}") from exc
    if sent < len(data):
        send_all(sock, memoryview(data)[sent:], deadline)


def recv_message(sock: socket.socket, deadline: float, *, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    """Receive one framed message (and up to ``max_fds`` file descriptors sent with it)."""
    header = bytearray(_HEADER.size)
    fds: list[int] = []
    got = 0
    if max_fds:
        _set_timeout(sock, socket.SO_RCVTIMEO, deadline)
        try:
            first, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, max_fds)
        except BlockingIOError as exc:
            raise TransferTimeout("no reply from peer before the deadline") from exc
        except OSError as exc:
            raise PeerDisconnected(f"connection lost: {exc}") from exc
        if not first:
            raise PeerDisconnected("peer closed the connection")
        header[: len(first)] = first
        got = len(first)
    try:
        if got < len(header):
            recv_exact(sock, memoryview(header)[got:], deadline)
        magic, length = _HEADER.unpack(header)
        if magic != MAGIC:
            raise ProtocolError(f"not a seedstack transport peer (got {bytes(header)!r})")
        if length > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"control message of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
        payload = bytearray(length)
        recv_exact(sock, memoryview(payload), deadline)
        message = json.loads(payload)
        if not isinstance(message, dict):
            raise ProtocolError("control message is not a JSON object")
        return message, fds
    except BaseException:
        for fd in fds:
            _close_fd(fd)
        raise


def _close_fd(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass


def error_reply(exc: TransferError) -> dict[str, Any]:
    """The reply a holder sends instead of bytes."""
    return {"ok": False, "error": exc.wire_name, "message": exc.message}


def raise_if_error(reply: dict[str, Any], name: str) -> None:
    """Turn a holder's error reply into the typed exception."""
    if not reply.get("ok", False):
        raise error_from_wire(str(reply.get("error", "internal")), str(reply.get("message", "holder error")), name=name)


def ranges_to_wire(ranges: Sequence[ByteRange]) -> list[list[int]]:
    """Compact JSON form of byte ranges."""
    return [[r.offset, r.length] for r in ranges]


def ranges_from_wire(data: Any) -> list[ByteRange]:
    """Parse byte ranges sent by a peer; :class:`ProtocolError` when malformed."""
    try:
        return [ByteRange(int(o), int(n)) for o, n in data]
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed byte ranges: {exc}") from exc
