"""TLS credentials for gRPC between nodes, gates and clients, from files.

With ``tls_cert``, ``tls_key`` and ``tls_ca`` set, a node serves gRPC over
TLS and, unless ``tls_client_auth`` is off, requires callers to present a
certificate signed by the same CA; its connections to other nodes present
its own certificate. grpcio's own TLS does the work.
"""

from __future__ import annotations

import ssl
from typing import Any

import grpc

from .errors import ConfigError


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError("%s: cannot read %r: %s" % (setting, path, exc)) from exc


def enabled(settings: Any) -> bool:
    return bool(settings.tls_cert)


def check_files(settings: Any) -> None:
    """Raise ConfigError naming the file when the certificate, key or CA is unusable.

    grpcio only says that the secure port could not be added (or that a
    handshake failed), never which file is wrong: load them once here.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for setting in ("tls_cert", "tls_key", "tls_ca"):
        _read(getattr(settings, setting), setting)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError("tls_cert %r with tls_key %r: not a PEM certificate and its "
                          "matching private key (%s)" % (settings.tls_cert, settings.tls_key,
                                                         exc)) from exc
    try:
        context.load_verify_locations(cafile=settings.tls_ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError("tls_ca %r: not a PEM CA certificate (%s)" % (
            settings.tls_ca, exc)) from exc


def server_credentials(settings: Any) -> grpc.ServerCredentials:
    pair = (_read(settings.tls_key, "tls_key"), _read(settings.tls_cert, "tls_cert"))
    return grpc.ssl_server_credentials(
        [pair], root_certificates=_read(settings.tls_ca, "tls_ca"),
        require_client_auth=settings.tls_client_auth)


def channel_credentials(settings: Any) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca, "tls_ca"),
        private_key=_read(settings.tls_key, "tls_key"),
        certificate_chain=_read(settings.tls_cert, "tls_cert"))
