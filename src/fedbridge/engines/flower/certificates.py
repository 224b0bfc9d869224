"""A throw-away certificate authority and SuperNode keys for a TLS deployment (demo and tests).

TLS: a CA signs the SuperLink's certificate for 127.0.0.1/localhost (or the names given); every
SuperNode and the `flwr` CLI trust that CA. Authentication: each SuperNode has its own EC P-384
key pair in OpenSSH format; the SuperLink accepts only nodes whose public key was registered.
For real machines, use certificates from your own CA with the SuperLink's real host name.
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedbridge.engines.flower.processes import Security

VALID_FOR = datetime.timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, form: serialization.PrivateFormat) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()))
    path.chmod(0o600)


def _certificate(subject: str, public_key, issuer: str, signer: ec.EllipticCurvePrivateKey, ca: bool,
                 hosts: list[str] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        names = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make(folder: Path, nodes: int, hosts: list[str] = ("127.0.0.1", "localhost")) -> Security:
    """CA, SuperLink certificate for `hosts`, and one authentication key pair per SuperNode in `folder`."""
    folder = folder.resolve()  # Flower wants absolute paths
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("fedbridge demo CA", ca_key.public_key(), "fedbridge demo CA", ca_key, ca=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key = ec.generate_private_key(ec.SECP384R1())
    _write_key(folder / "server.key", server_key, serialization.PrivateFormat.PKCS8)
    server = _certificate(hosts[0], server_key.public_key(), "fedbridge demo CA", ca_key, ca=False, hosts=list(hosts))
    (folder / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    keys = [node_key(folder / f"node-{i}") for i in range(nodes)]
    return Security(folder / "ca.crt", folder / "server.crt", folder / "server.key", keys)


def node_key(stem: Path) -> Path:
    """A SuperNode's key pair: STEM (private, for --auth-supernode-private-key) and STEM.pub (to register)."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write_key(stem, key, serialization.PrivateFormat.OpenSSH)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    stem.with_suffix(".pub").write_bytes(public + b"\n")
    return stem


def main() -> None:
    """python -m fedbridge.engines.flower.certificates FOLDER --nodes N [--host NAME ...]"""
    import argparse

    parser = argparse.ArgumentParser(description="A demo CA, SuperLink certificate and SuperNode keys.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--nodes", type=int, required=True, help="SuperNode key pairs to make")
    parser.add_argument("--host", action="append", help="the SuperLink's IP or DNS name (repeatable); default 127.0.0.1, localhost")
    args = parser.parse_args()
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    security = make(args.folder, args.nodes, args.host or ["127.0.0.1", "localhost"])
    print(f"CA {security.ca_cert}, SuperLink {security.server_cert} + {security.server_key}, "
          f"SuperNode keys {', '.join(str(k) for k in security.node_keys)} (+ .pub)")


if __name__ == "__main__":
    main()
