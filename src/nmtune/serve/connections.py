"""Connections that end politely and reads that keep a deadline (slow clients)."""

from __future__ import annotations

import io
import queue
import selectors
import socket
import threading
import time

from .batcher import take_waiting

#: Seconds a closing connection is drained of unread input before it is closed.
LINGER_SECONDS = 2.0



class Lingerer:
    """Close sockets without resetting them: stop writing, drain the client's unread input
    (until it closes, or for ``seconds``), then close. One thread serves every such socket."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._incoming: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="nmtune-linger", daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:  # already reset by the client
            sock.close()
            return
        self._incoming.put(sock)

    def stop(self) -> None:
        self._incoming.put(None)

    def _run(self) -> None:
        deadlines: dict[socket.socket, float] = {}
        with selectors.DefaultSelector() as selector:
            while True:
                new, stop = take_waiting(self._incoming, block=not deadlines)
                for sock in new:
                    deadlines[sock] = time.monotonic() + self.seconds
                    selector.register(sock, selectors.EVENT_READ)
                if stop:
                    for sock in deadlines:
                        sock.close()
                    return
                for key, _ in selector.select(timeout=0.05):
                    if not self._drain(key.fileobj):
                        deadlines[key.fileobj] = 0.0
                now = time.monotonic()
                for sock in [s for s, deadline in deadlines.items() if deadline <= now]:
                    selector.unregister(sock)
                    del deadlines[sock]
                    sock.close()

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        """Read what is there; False once the client has closed (or reset) its side."""
        try:
            return bool(sock.recv(1 << 16))
        except BlockingIOError:
            return True
        except OSError:
            return False


class DeadlineReader(io.RawIOBase):
    """A socket's input with an overall deadline: a slow client cannot stretch a request by
    sending a byte now and then, as it could against a per-read timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("read deadline passed")
            self.sock.settimeout(left)
        n = self.sock.recv_into(buffer)
        self.received += n
        return n
