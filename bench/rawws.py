"""A deliberately minimal WebSocket client for load generation (RFC 6455, client side only).

An alternative to the ``websockets`` library for the load generator (``--client raw``). Measured
here with 50 connections, the websockets client uses about 0.25 of a core at ~6,000 msg/s and this
one about 0.2, so neither is the bottleneck and the default stays ``websockets``; this one is
kept for checking that a result does not depend on the client. It does the handshake, sends
masked text frames (mask key 0, which RFC 6455 allows) and reads unmasked data frames from a
StreamReader: no extensions, no fragmentation; a ping from the server is answered. It is for
loopback benchmarking only.
"""

import asyncio
import base64
import os
import struct

_MASK = b"\x00\x00\x00\x00"


class HandshakeError(Exception):
    """The server did not answer the upgrade with 101."""


def frame(payload, opcode=0x1):
    """Return one masked, final client frame (mask key 0) carrying `payload` (bytes)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _MASK + payload  # XOR with a zero key leaves the payload as is


class RawWebSocket:
    """One client connection; ``await RawWebSocket.connect(host, port, path)``."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host, port, path, timeout=20.0):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
             f"Origin: http://{host}:{port}\r\n\r\n").encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            writer.close()
            raise HandshakeError(status.decode("latin-1"))
        return cls(reader, writer)

    def send_frame(self, data):
        """Write a pre-built frame (see :func:`frame`)."""
        self.writer.write(data)

    async def recv(self):
        """Return the payload (bytes) of the next data frame; None when the server closed."""
        reader = self.reader
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(n) if n else b""
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x2, 0x0):
                return payload
            if opcode == 0x8:
                return None
            if opcode == 0x9:  # ping: answer with a pong carrying the same payload
                self.writer.write(frame(payload, 0xA))

    async def close(self, timeout=5.0):
        """Send a 1000 close frame, wait briefly for the server's, and drop the TCP connection."""
        try:
            self.writer.write(frame(struct.pack("!H", 1000), 0x8))
            await asyncio.wait_for(self._drain_until_close(), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.writer.close()

    async def _drain_until_close(self):
        while await self.recv() is not None:
            pass
