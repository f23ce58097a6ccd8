"""gunicorn's gthread worker, accepting a new connection only while one of its threads is free.

A keep-alive connection stays with the worker that accepted it. Plain gthread accepts whenever its listener
is readable, so in a burst of new connections one worker can take most of them and then serve them alone on
one core under its GIL while the others idle (benchmarks/serving.py saw 78 % of the requests on one of four
workers, 1.26 of 2 cores busy). This worker stops accepting while every thread has a request, so a new
connection goes to a worker that can start on it now, as sync workers and nginx's accept_mutex arrange;
connections it already holds are served as before. A new connection that has sent nothing within
FIRST_BYTES_WAIT waits in the poller, not in a thread (gthread would hold a thread for it up to 5 s), so idle
connects cannot stop a worker from accepting; the short wait keeps a client that writes right after
connecting (most do) from being parked, which would let this worker go on accepting its other connections.
A stopping worker does not start accepting again. gunicorn.conf.py names it as the worker class. It
overrides gthread's own methods, so pyproject pins gunicorn 27.
"""
from __future__ import annotations

import selectors
import time
from functools import partial

from gunicorn.workers.gthread import DEFAULT_WORKER_DATA_TIMEOUT, ThreadWorker

FIRST_BYTES_WAIT = 0.002  # seconds the loop waits for a new connection's first bytes before parking it


class BalancedThreadWorker(ThreadWorker):
    """ThreadWorker that listens for new connections only while fewer requests are in its thread pool than
    it has threads."""

    def init_process(self) -> None:
        self.in_pool = 0  # requests handed to the thread pool and not finished yet
        super().init_process()

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and self.alive and self.in_pool < self.cfg.threads)

    def enqueue_req(self, conn) -> None:
        if not conn.initialized and not conn.wait_for_data(FIRST_BYTES_WAIT):
            self._wait_in_poller(conn)
            return
        super().enqueue_req(conn)
        self.in_pool += 1
        self.set_accept_enabled(self._accepting)

    def finish_request(self, conn, fs) -> None:
        self.in_pool -= 1
        super().finish_request(conn, fs)
        self.set_accept_enabled(self.nr_conns < self.worker_connections)

    def _wait_in_poller(self, conn) -> None:
        """A connection with no data yet waits for its first bytes in the poller, as gthread parks one whose
        thread waited in vain, and for as long in all (on_pending_socket_readable hands it on)."""
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + DEFAULT_WORKER_DATA_TIMEOUT + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))
