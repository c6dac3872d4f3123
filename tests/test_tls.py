"""TLS between nodes: certificates from files, and a stranger cannot join."""

from __future__ import annotations

import subprocess

import pytest
from google.protobuf.wrappers_pb2 import StringValue

import goverse
from goverse.testing import wait_until


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    """A CA and one certificate for 127.0.0.1 signed by it; returns the paths."""
    directory.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=%s-ca" % name, "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s-node" % name,
             "-keyout", "node.key", "-out", "node.csr", cwd=directory)
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "node.pem",
             cwd=directory)
    return {"tls_cert": str(directory / "node.pem"), "tls_key": str(directory / "node.key"),
            "tls_ca": str(directory / "ca.pem")}


@pytest.fixture
def certificates(tmp_path):
    return make_ca(tmp_path / "good", "good"), make_ca(tmp_path / "other", "other")


def test_nodes_with_certificates_from_one_ca_call_each_other(make_node, certificates):
    good, _ = certificates
    first = make_node(num_shards=64, **good)
    second = make_node(num_shards=64, **good)
    wait_until(lambda: first.cluster.is_settled() and len(first.cluster.state.nodes) == 2, 20)
    answer = first.call_object("Counter", "%s/tls" % second.address, "Where", StringValue(),
                               timeout=5)
    assert answer.value == second.address


def test_node_without_the_right_certificate_gets_no_shards(make_node, certificates):
    good, other = certificates
    first = make_node(num_shards=64, **good)
    stranger = make_node(num_shards=64, wait_ready=False, **other)
    wait_until(lambda: stranger.address in first.cluster.state.nodes, 10)

    # The leader probes new nodes before giving them shards: the stranger's
    # certificate is not signed by the cluster's CA, so the probe fails.
    wait_until(lambda: first.cluster._reachable.get(stranger.address) is False, 10)
    owners = {v.owner for v in first.cluster.state.shards}
    assert owners == {first.address}

    # The stranger cannot reach the cluster's nodes either (the handshake
    # fails), so its calls fail fast rather than hang.
    with pytest.raises((goverse.PeerUnavailable, goverse.CallTimeout)):
        stranger.call_object("Counter", "%s/x" % first.address, "Where", StringValue(),
                             timeout=2)


def test_client_reaches_a_gate_over_tls(make_node, certificates, cluster_prefix,
                                        etcd_endpoint):
    from goverse.client import Client
    from goverse.gate import Gate
    from google.protobuf.wrappers_pb2 import Int64Value

    good, other = certificates
    node = make_node(num_shards=64, **good)
    # The gate shows the cluster's certificate to clients but asks none of
    # them for one (outside clients have no certificate of the cluster's CA).
    gate = Gate(goverse.Settings.from_mapping(dict(
        good, tls_client_auth=False, etcd_endpoints=[etcd_endpoint],
        etcd_prefix=cluster_prefix, listen="127.0.0.1:0", http_listen="",
        num_shards=64, stability_window=0.2))).start()
    try:
        wait_until(lambda: node.cluster.is_settled(), 20)
        with Client([gate.address], tls_ca=good["tls_ca"], timeout=5) as client:
            answer = client.call("Counter", "tls-counter", "Add", Int64Value(value=4),
                                 response_type=Int64Value)
            assert answer.value == 4
        # A client that trusts another CA refuses the gate's certificate.
        with Client([gate.address], tls_ca=other["tls_ca"], timeout=2) as stranger:
            with pytest.raises(goverse.GoverseError):
                stranger.call("Counter", "tls-counter", "Add", Int64Value(value=1))
    finally:
        gate.stop()


def test_cluster_admin_asks_tls_nodes_with_the_cluster_certificate(
        make_node, certificates, cluster_prefix, etcd_endpoint):
    from goverse.admin import ClusterSource

    good, _ = certificates
    node = make_node(num_shards=64, **good)
    node.call_object("Counter", "%s/listed" % node.address, "Where", StringValue(), timeout=5)

    def source(**tls):
        return ClusterSource.from_settings(goverse.Settings.from_mapping(dict(
            tls, etcd_endpoints=[etcd_endpoint], etcd_prefix=cluster_prefix)),
            node_timeout=2)

    admin = source(**good)
    try:
        [row] = admin.nodes()
        assert "error" not in row and row["objects"] == 1, row
    finally:
        admin.close()
    # A plaintext admin is refused by the TLS node, and says so per node.
    plain = source()
    try:
        [row] = plain.nodes()
        assert row["objects"] is None and node.address in row["error"], row
    finally:
        plain.close()


# -- etcd over TLS ----------------------------------------------------------------


@pytest.fixture
def tls_etcd(certificates):
    """An etcd that serves clients over TLS and asks each for a certificate of its CA."""
    from goverse.etcd_server import EtcdServer

    good, _ = certificates
    server = EtcdServer(name="goverse-tls-etcd", cert_file=good["tls_cert"],
                        key_file=good["tls_key"], ca_file=good["tls_ca"],
                        client_cert_auth=True).start()
    yield server
    server.stop()


def test_nodes_use_an_etcd_over_tls_with_client_certificates(tls_etcd, certificates,
                                                             cluster_prefix):
    from tests import sample_objects  # noqa: F401  (registers Counter)

    good, _ = certificates
    settings = dict(etcd_endpoints=[tls_etcd.endpoint], etcd_prefix=cluster_prefix,
                    etcd_ca_cert=good["tls_ca"], etcd_cert=good["tls_cert"],
                    etcd_key=good["tls_key"], listen="127.0.0.1:0", num_shards=16,
                    stability_window=0.2)
    first = goverse.Node(goverse.Settings.from_mapping(settings)).start(timeout=30)
    second = goverse.Node(goverse.Settings.from_mapping(settings)).start(timeout=30)
    try:
        wait_until(lambda: first.cluster.is_settled() and len(first.cluster.state.nodes) == 2,
                   20, message="two nodes settled on the TLS etcd")
        answer = first.call_object("Counter", "%s/etcd-tls" % second.address, "Where",
                                   StringValue(), timeout=5)
        assert answer.value == second.address
    finally:
        second.stop(grace=2)
        first.stop(grace=2)


def test_etcd_over_tls_refuses_clients_without_the_right_certificates(tls_etcd,
                                                                      certificates):
    from goverse.errors import EtcdUnavailable
    from goverse.etcd import EtcdClient

    good, other = certificates
    with EtcdClient([tls_etcd.endpoint], timeout=2.0, **tls_etcd.client_tls()) as client:
        client.put("/tls/k", "1")
        assert client.get("/tls/k").value == b"1"
    # Trusting another CA: the server's certificate is refused.
    with EtcdClient([tls_etcd.endpoint], timeout=2.0, ca_cert=other["tls_ca"]) as client:
        with pytest.raises(EtcdUnavailable):
            client.get("/tls/k")
    # The right CA but no client certificate: the server refuses the client.
    with EtcdClient([tls_etcd.endpoint], timeout=2.0, ca_cert=good["tls_ca"]) as client:
        with pytest.raises(EtcdUnavailable):
            client.get("/tls/k")
    # Plaintext to a TLS port gets nowhere either.
    with EtcdClient([tls_etcd.endpoint], timeout=2.0) as client:
        with pytest.raises(EtcdUnavailable):
            client.get("/tls/k")


def test_a_node_that_cannot_verify_etcd_says_so(tls_etcd, certificates, cluster_prefix):
    _, other = certificates
    settings = dict(etcd_endpoints=[tls_etcd.endpoint], etcd_prefix=cluster_prefix,
                    etcd_ca_cert=other["tls_ca"], listen="127.0.0.1:0", num_shards=16,
                    etcd_timeout=2.0)
    node = goverse.Node(goverse.Settings.from_mapping(settings))
    with pytest.raises(goverse.GoverseError, match=tls_etcd.endpoint):
        node.start(timeout=10)
    node.stop(grace=0)


@pytest.mark.parametrize("broken", ["tls_cert", "tls_key", "tls_ca"])
def test_an_unusable_certificate_file_is_named(certificates, tmp_path, broken):
    good, other = certificates
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("garbage\n")
    settings = dict(good, listen="127.0.0.1:0", etcd_endpoints=["127.0.0.1:1"])
    settings[broken] = str(garbage)
    with pytest.raises(goverse.ConfigError, match=broken):
        goverse.Node(goverse.Settings.from_mapping(settings))


def test_a_key_that_does_not_match_its_certificate_is_named(certificates):
    good, other = certificates
    settings = dict(good, tls_key=other["tls_key"], listen="127.0.0.1:0",
                    etcd_endpoints=["127.0.0.1:1"])
    with pytest.raises(goverse.ConfigError, match="matching private key"):
        goverse.Node(goverse.Settings.from_mapping(settings))
