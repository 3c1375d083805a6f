"""Certificates from a private CA made by ``trustme``, written to files, and the
server contexts that use them (TLS, or mTLS requiring a client certificate)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class PrivateCA:
    ca: trustme.CA
    ca_file: str
    server: trustme.LeafCert
    client_cert_file: str  # a client certificate (for mTLS) and its key
    client_key_file: str

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        if require_client_cert:
            self.ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def private_ca(folder: Path) -> PrivateCA:
    ca = trustme.CA(organization_name="Spillway test CA")
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("gateway@spillway.test")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    client.private_key_pem.write_to_path(str(folder / "client.key"))
    return PrivateCA(ca, str(folder / "ca.pem"), server, str(folder / "client.pem"),
                     str(folder / "client.key"))  # fmt: skip
