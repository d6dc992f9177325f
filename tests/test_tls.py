"""TLS straight from the daemon: ``--port ssl:PORT:privateKey=key.pem:certKey=cert.pem``.

The certificate is made here, at test time, for 127.0.0.1 and localhost;
clients trust exactly that certificate, so the test proves verification
passes, not that it was switched off.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.support import Party
from tests.test_tail import tail

pytestmark = pytest.mark.daemon


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "partysense-live test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def tls_daemon(db_dsn: str, tmp_path: Path) -> Iterator[tuple[Daemon, ssl.SSLContext, Path]]:
    key, cert = self_signed(tmp_path)
    daemon = Daemon(db_dsn, tmp_path, admin=False)  # /metrics over TLS on the one port
    # A second --port wins over the helper's tcp: one; port 0 here too, and
    # the port it got is logged as "Site (TLS) starting on PORT".
    daemon.extra += ["--port", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
    trust = ssl.create_default_context(cafile=str(cert))
    daemon.start(wait=False)  # until it listens: /healthz is asked over TLS below
    try:
        wait_for(lambda: https_health(daemon, trust) == 200, 30, "the daemon to answer on TLS")
        yield daemon, trust, cert
    finally:
        daemon.stop()


def https_health(daemon: Daemon, trust: ssl.SSLContext) -> int | None:
    if daemon.process is not None and daemon.process.poll() is not None:
        raise AssertionError(f"twistd exited with {daemon.process.returncode}:\n{daemon.log()}")
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{daemon.port}/healthz", timeout=2,
                                    context=trust) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_a_wss_client_receives_a_vote(tls_daemon: tuple[Daemon, ssl.SSLContext, Path],
                                      party: Party) -> None:
    daemon, trust, _ = tls_daemon
    event_id, track_id = party.event("Secure"), party.track()
    with connect(f"wss://127.0.0.1:{daemon.port}/", ssl=trust, open_timeout=10) as client:
        client.send(json.dumps({"event": event_id}))
        wait_for(lambda: https_metrics_channels(daemon, trust) == 1, 10,
                 "the subscription to reach the listener")
        vote_id = party.vote(event_id, track_id)
        change = json.loads(client.recv(timeout=10))
        assert (change["eid"], change["vote"], change["op"]) == (event_id, vote_id, "insert")


def https_metrics_channels(daemon: Daemon, trust: ssl.SSLContext) -> float:
    with urllib.request.urlopen(f"https://127.0.0.1:{daemon.port}/metrics", timeout=2,
                                context=trust) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("partysense_channels_listened "):
                return float(line.split()[1])
    raise AssertionError("no partysense_channels_listened in /metrics")


def test_an_untrusted_client_is_turned_away(
        tls_daemon: tuple[Daemon, ssl.SSLContext, Path]) -> None:
    daemon, _, _ = tls_daemon
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(f"wss://127.0.0.1:{daemon.port}/", ssl=ssl.create_default_context(),
                open_timeout=10)


def test_tail_over_wss_with_the_certificate(tls_daemon: tuple[Daemon, ssl.SSLContext, Path],
                                            party: Party) -> None:
    daemon, _, cert = tls_daemon
    event_id, track_id = party.event("Tail"), party.track("Secure Song", "Band")
    url = f"wss://localhost:{daemon.port}/"
    with tail("--event", str(event_id), "--url", url, "--cafile", str(cert)) as watching:
        watching.wait_for_err(f"watching event {event_id}")
        party.vote(event_id, track_id)
        assert ' insert up "Secure Song" by "Band"' in watching.line()
