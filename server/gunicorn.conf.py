"""gunicorn settings for the recsys service: `recsys serve --bundle DIR` uses this file.

preload_app loads the bundle once in the master before forking: workers share the memory-mapped index
pages and the numpy arrays copy-on-write. Loopback only by default.
"""
import os

bind = os.environ.get("RECSYS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("RECSYS_WORKERS", "2"))
threads = int(os.environ.get("RECSYS_THREADS", "4"))
worker_class = "gthread"
preload_app = True
timeout = 30
graceful_timeout = 20
accesslog = "-"
access_log_format = '{"remote": "%(h)s", "request": "%(r)s", "status": %(s)s, "bytes": %(b)s, "ms": %(M)s}'
wsgi_app = "server:create_app()"
