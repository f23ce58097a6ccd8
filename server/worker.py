"""gunicorn's gthread worker, accepting a new connection only while one of its threads is free.

A keep-alive connection stays with the worker that accepted it. Plain gthread accepts whenever its listener
is readable, so in a burst of new connections one worker can take most of them and then serve them alone on
one core under its GIL while the others idle (benchmarks/serving.py saw 78 % of the requests on one of four
workers, 1.26 of 2 cores busy). This worker stops accepting while every thread has a request, so a new
connection goes to a worker that can start on it now, as sync workers and nginx's accept_mutex arrange;
connections it already holds are served as before. gunicorn.conf.py names it as the worker class.
"""
from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class BalancedThreadWorker(ThreadWorker):
    """ThreadWorker that listens for new connections only while fewer requests are in its thread pool than
    it has threads."""

    def init_process(self) -> None:
        self.in_pool = 0  # requests handed to the thread pool and not finished yet
        super().init_process()

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and self.in_pool < self.cfg.threads)

    def enqueue_req(self, conn) -> None:
        self.in_pool += 1
        super().enqueue_req(conn)
        self.set_accept_enabled(self._accepting)

    def finish_request(self, conn, fs) -> None:
        self.in_pool -= 1
        super().finish_request(conn, fs)
        self.set_accept_enabled(self.nr_conns < self.worker_connections)
