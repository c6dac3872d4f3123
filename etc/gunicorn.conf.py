"""gunicorn settings for the cluster admin (goverse.admin.wsgi:app).

    GOVERSE_ETCD_ENDPOINTS=127.0.0.1:2379 \
        gunicorn -c etc/gunicorn.conf.py goverse.admin.wsgi:app

The gevent worker patches each worker process itself, after the master
has read this file: keep grpc out of the master (no preload, no goverse
import at module level here).
"""

import os

bind = os.environ.get("GOVERSE_ADMIN_BIND", "127.0.0.1:8081")
worker_class = "gevent"
_workers = os.environ.get("GOVERSE_ADMIN_WORKERS", "1")
if not (_workers.isascii() and _workers.isdigit() and int(_workers) >= 1):
    raise SystemExit("GOVERSE_ADMIN_WORKERS must be a whole number of at least 1, got %r"
                     % (_workers,))
workers = int(_workers)
worker_connections = 100
preload_app = False
# A request waits at most for etcd and one per-node timeout; this is only
# the backstop against a stuck worker.
timeout = 30
graceful_timeout = 10
accesslog = os.environ.get("GOVERSE_ADMIN_ACCESS_LOG") or None
# gunicorn 25.1+ opens a control socket in $HOME by default, shared by
# every gunicorn of the user; the admin turns it on only when asked (older
# gunicorn versions ignore both names).
control_socket = os.environ.get("GOVERSE_ADMIN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def post_fork(server, worker):
    # Runs in the new worker but before the gevent worker patches it
    # (gunicorn calls post_fork, then worker.init_process, which patches):
    # grpc cannot be set up on gevent yet. Only make sure the worker does
    # not inherit grpc's fork handlers.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


def post_worker_init(worker):
    # The worker is patched now: set grpc up on gevent before the first
    # channel (goverse.admin.wsgi would otherwise do it on first request).
    from goverse import runtime

    runtime.init_grpc()
