"""The connection settings really reach nats-py: a token, TLS with a client
certificate, a .creds file (operator mode), and the inbox prefix a user's
permissions allow. Each against a real nats-server configured for it; a
wrong secret is refused with a clear error, not a hang.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import anyio
import nkeys
import pytest

from services.dev import NatsServer
from shared.connection import connect, inbox_prefix
from shared.errors import StackUnavailable
from shared.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Seconds a connection that the server refuses is given before it counts as refused.
REFUSED_WAIT = 2.0


# --- token and TLS -------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=d)  # fmt: skip
    for who, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                 "-keyout", f"{who}-key.pem", "-out", f"{who}.csr", cwd=d)  # fmt: skip
        (d / f"{who}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext",
                 "-out", f"{who}.pem", cwd=d)  # fmt: skip
    return d


async def _connects(settings: Settings) -> None:
    nc = await connect(settings, name="test-settings", wait=10)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


async def test_tls_with_a_client_certificate(certificates: Path, tmp_path: Path) -> None:
    d = certificates
    server = NatsServer(
        tmp_path / "nats",
        extra_config=(
            f'tls {{\n  cert_file: "{d / "server.pem"}"\n  key_file: "{d / "server-key.pem"}"\n'
            f'  ca_file: "{d / "ca.pem"}"\n  verify: true\n}}\n'
        ),
    )
    await anyio.to_thread.run_sync(server.start)
    try:
        url = f"tls://127.0.0.1:{server.port}"
        await _connects(
            Settings(
                nats_url=url,
                tls_ca=str(d / "ca.pem"),
                tls_cert=str(d / "client.pem"),
                tls_key=str(d / "client-key.pem"),
            )
        )
        # Without the client certificate the server refuses the connection.
        with pytest.raises(StackUnavailable):
            await _connects_quickly(Settings(nats_url=url, tls_ca=str(d / "ca.pem")))
    finally:
        server.stop()


async def _connects_quickly(settings: Settings) -> None:
    nc = await connect(settings, name="test-settings", wait=REFUSED_WAIT)
    await nc.close()


async def test_token_authentication(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", extra_config='authorization { token: "s3cret" }')
    await anyio.to_thread.run_sync(server.start)
    try:
        await _connects(Settings(nats_url=server.url, nats_token="s3cret"))
        with pytest.raises(StackUnavailable, match="refused this connection"):
            await _connects_quickly(Settings(nats_url=server.url, nats_token="wrong"))
    finally:
        server.stop()


def test_the_inbox_prefix_follows_the_user() -> None:
    assert inbox_prefix(Settings()) == "_INBOX"
    assert inbox_prefix(Settings(nats_user="runner")) == "_INBOX.runner"
    assert inbox_prefix(Settings(nats_user="a.b")) == "_INBOX"  # not a single token
    assert inbox_prefix(Settings(nats_user="runner", nats_inbox_prefix="_R")) == "_R"
    assert Settings.from_env({"SLUICE_NATS_INBOX_PREFIX": "_X"}).nats_inbox_prefix == "_X"


# --- .creds files (operator mode, JWTs signed here with nkeys) ---------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[bytes, nkeys.KeyPair]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(seed)


def _jwt(issuer: nkeys.KeyPair, subject: nkeys.KeyPair, nats_claims: dict[str, object]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "sub": subject.public_key.decode(),
        "name": "test",
        "nats": {"version": 2, **nats_claims},
    }
    digest = hashlib.sha256(json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(issuer.sign(f'{header}.{body}'.encode()))}"


def _creds(path: Path, account: nkeys.KeyPair) -> Path:
    seed, user = _keypair(nkeys.PREFIX_BYTE_USER)
    token = _jwt(account, user, {"type": "user", "subs": -1, "data": -1, "payload": -1})
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return path


async def test_a_creds_file_authenticates(tmp_path: Path) -> None:
    _, operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    _, stranger = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # an account the server does not trust
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "conn": -1}
    _, system = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs a system account
    preload = "\n".join(
        f"  {a.public_key.decode()}: {_jwt(operator, a, {'type': 'account', 'limits': limits})}"
        for a in (account, system)
    )
    server = NatsServer(
        tmp_path / "nats",
        extra_config=(
            f"operator: {_jwt(operator, operator, {'type': 'operator'})}\n"
            f"system_account: {system.public_key.decode()}\n"
            f"resolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n"
        ),
    )
    await anyio.to_thread.run_sync(server.start)
    try:
        good = _creds(tmp_path / "good.creds", account)
        nc = await connect(Settings(nats_url=server.url, nats_creds=str(good)), name="t", wait=10)
        await nc.flush()
        await nc.close()
        bad = _creds(tmp_path / "bad.creds", stranger)
        with pytest.raises(StackUnavailable, match="refused this connection"):
            await _connects_quickly(Settings(nats_url=server.url, nats_creds=str(bad)))
    finally:
        server.stop()
