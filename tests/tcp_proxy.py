"""A TCP proxy the tests control, to cut a process off from RabbitMQ or PostgreSQL.

    with TcpProxy(("127.0.0.1", 5672)) as proxy:
        url = proxy.via(broker_url)  # the same broker, through the proxy
        ...
        proxy.cut()       # drop every live connection and refuse new ones
        proxy.restore()   # accept connections again
        proxy.freeze()    # keep every connection open but forward nothing (a hung peer)
        proxy.thaw()      # forward again

Threads, no dependencies; everything stops with ``close()``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import urllib.parse


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._accepting = threading.Event()
        self._accepting.set()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # -- control ---------------------------------------------------------------------
    def cut(self) -> None:
        """Drop every live connection and refuse new ones until ``restore()``."""
        self._accepting.clear()
        self._drop_all()

    def restore(self) -> None:
        self._accepting.set()

    def freeze(self) -> None:
        """Keep every connection open and forward nothing: the peer seems hung, not gone."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._drop_all()
        self._thread.join(timeout=5)
        self._server.close()

    def via(self, url: str) -> str:
        """``url`` (credentials, vhost, options) pointed at this proxy instead."""
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------
    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            if not self._accepting.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while not self._closed.is_set():
                if not self._flowing.wait(timeout=0.2):
                    continue
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            for sock in (a, b):
                sock.close()
            with self._lock:
                if (a, b) in self._pairs:
                    self._pairs.remove((a, b))
