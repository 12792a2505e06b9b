"""A minimal WebSocket (RFC 6455) for the simulators: the server side of the echo
backend (``sim.traefik``) and a client for tests, the load generator and the demo.

Only what a test needs: the opening handshake (section 4), unfragmented text and binary
frames, close (section 5.5.1), no extensions. Frames from the client are masked, frames
from the server are not (section 5.3). Stdlib only.

Through Traefik, an upgraded connection's bytes never show in its access log: the proxy
hijacks the connection and copies both ways until one side closes, then writes one line
for the whole session with both sizes 0 (see ``sim.traefik`` for the exact line).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from typing import BinaryIO

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
MAX_FRAME = 16 * 1024 * 1024  # bound on one frame's payload (a test device, not a server)


class WebSocketError(Exception):
    """A handshake or framing error."""


def accept_key(key: str | bytes) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (section 4.2.2)."""
    raw = key.encode() if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw.strip() + GUID).digest()).decode()


def _read_exact(stream: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = stream.read(count - len(data))
        if not piece:
            raise WebSocketError("connection closed inside a frame")
        data += piece
    return data


def read_frame(stream: BinaryIO) -> tuple[int, bytes]:
    """One frame: ``(opcode, payload)``, unmasked. Fragments are returned as they come."""
    head = _read_exact(stream, 2)
    opcode = head[0] & 0x0F
    masked = head[1] & 0x80
    length = head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _read_exact(stream, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _read_exact(stream, 8))
    if length > MAX_FRAME:
        raise WebSocketError(f"frame of {length} bytes")
    mask = _read_exact(stream, 4) if masked else b""
    payload = _read_exact(stream, length)
    if mask:
        payload = _unmask(payload, mask)
    return opcode, payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame (FIN set); masked with a random key when ``mask``."""
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _unmask(payload, key)


def serve_echo(rfile: BinaryIO, wfile: BinaryIO) -> int:
    """Server side after a 101: echo data frames, answer pings, answer a close and
    return. Returns the payload bytes echoed."""
    echoed = 0
    while True:
        try:
            opcode, payload = read_frame(rfile)
        except (WebSocketError, OSError):
            return echoed
        if opcode == OP_CLOSE:
            try:
                wfile.write(frame(OP_CLOSE, payload[:2], mask=False))
                wfile.flush()
            except OSError:
                pass  # the client went away first
            return echoed
        if opcode == OP_PING:
            wfile.write(frame(OP_PONG, payload, mask=False))
        elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            wfile.write(frame(opcode, payload, mask=False))
            echoed += len(payload)
        wfile.flush()


class WebSocketClient:
    """A blocking client on one TCP connection: ``send``, ``recv``, ``close``.

    ``connect("127.0.0.1", port, host="alpha.t.lum.tools", path="/ws")`` does the
    opening handshake with the given Host header and raises ``WebSocketError`` unless
    the answer is a 101 with the right ``Sec-WebSocket-Accept``. ``sent`` and
    ``received`` count data payload bytes (what a meter would want to bill).
    """

    def __init__(self, sock: socket.socket, rfile: BinaryIO) -> None:
        self.sock = sock
        self.rfile = rfile
        self.sent = 0
        self.received = 0
        self.closed = False

    @classmethod
    def connect(cls, address: str, port: int, *, host: str, path: str = "/ws",
                timeout: float = 10.0, headers: dict[str, str] | None = None) -> WebSocketClient:
        sock = socket.create_connection((address, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        rfile = sock.makefile("rb")
        try:
            status = rfile.readline(65536).decode("latin-1")
            answer: dict[str, str] = {}
            while True:
                line = rfile.readline(65536).decode("latin-1").strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                answer[name.strip().lower()] = value.strip()
            if status.split(" ")[1:2] != ["101"]:
                raise WebSocketError(f"no upgrade: {status.strip()!r}")
            if answer.get("sec-websocket-accept") != accept_key(key):
                raise WebSocketError("wrong Sec-WebSocket-Accept")
        except BaseException:
            rfile.close()
            sock.close()
            raise
        return cls(sock, rfile)

    def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        self.sock.sendall(frame(opcode, payload, mask=True))
        self.sent += len(payload)

    def recv(self) -> bytes:
        """The next data frame's payload (pongs skipped)."""
        while True:
            opcode, payload = read_frame(self.rfile)
            if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                self.received += len(payload)
                return payload
            if opcode == OP_CLOSE:
                self.closed = True
                raise WebSocketError("closed by the server")

    def echo(self, payload: bytes) -> bytes:
        """Send one frame and read its echo."""
        self.send(payload)
        return self.recv()

    def close(self) -> None:
        """Send a close frame, wait for the server's, and close the connection."""
        try:
            if not self.closed:
                self.sock.sendall(frame(OP_CLOSE, struct.pack("!H", CLOSE_NORMAL), mask=True))
                while True:
                    opcode, _ = read_frame(self.rfile)
                    if opcode == OP_CLOSE:
                        break
        except (WebSocketError, OSError):
            pass  # the server closed first: nothing left to say
        finally:
            self.closed = True
            self.rfile.close()
            self.sock.close()

    def __enter__(self) -> WebSocketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
