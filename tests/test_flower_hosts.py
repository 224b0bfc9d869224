"""Bad input to the real-machine commands is a message naming the thing and the fix, before any run
directory or process exists: an address that is not HOST:PORT, an unreachable SuperLink, a CA that
does not vouch for the SuperLink's certificate, a certificates folder without the file needed."""

import socket
import ssl
import threading

import pytest

from conftest import CONFIGS, invoke

pytest.importorskip("flwr")
pytest.importorskip("psutil")

from fedbridge.engines.flower import certificates  # noqa: E402


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server on loopback with a certificate from its own CA; yields its port."""
    own = certificates.make(tmp_path / "server-ca", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(own.server_cert, own.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve():
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass  # the client gave up on the handshake, as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(timeout=10)


def deploy(tmp_path, *args):
    out = tmp_path / "run"
    result = invoke("deploy", CONFIGS / "seed.toml", "--set", "data.name=digits", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert not out.exists()
    return result.output


def test_an_address_without_a_port_is_named(tmp_path):
    assert "--superlink 'somewhere' is not HOST:PORT" in deploy(tmp_path, "--superlink", "somewhere")


def test_an_unreachable_superlink_is_named(tmp_path):
    port = closed_port()
    output = deploy(tmp_path, "--superlink", f"127.0.0.1:{port}")
    assert f"cannot reach the SuperLink at 127.0.0.1:{port}" in output and "--serve-superlink" in output


def test_a_ca_that_does_not_vouch_for_the_superlink_is_named(tmp_path, tls_server):
    other = certificates.make(tmp_path / "other-ca", 1)  # a CA the server's certificate is not from
    output = deploy(tmp_path, "--superlink", f"127.0.0.1:{tls_server}", "--certificates", other.ca_cert.parent)
    assert "has a certificate that" in output and "does not vouch for" in output and "ca.crt" in output


def test_a_certificates_folder_without_the_ca_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    output = deploy(tmp_path, "--superlink", "127.0.0.1:9093", "--certificates", tmp_path / "empty")
    assert "has no ca.crt" in output and "python -m fedbridge.engines.flower.certificates" in output


def test_a_supernode_needs_its_partition_and_a_reachable_superlink(tmp_path):
    result = invoke("deploy", "--serve-supernode", "127.0.0.1:9093")
    assert result.exit_code == 2 and "--serve-supernode needs --partition-id" in result.output
    port = closed_port()
    result = invoke("deploy", "--serve-supernode", f"127.0.0.1:{port}", "--partition-id", "0")
    assert result.exit_code == 2 and f"cannot reach the SuperLink at 127.0.0.1:{port}" in result.output
    result = invoke("deploy", "--serve-supernode", "127.0.0.1:1", "--partition-id", "0", "--data-folder", tmp_path / "no")
    assert result.exit_code == 2 and "does not exist" in result.output
