"""Real redis-server processes for the tests: standalone, a 3-primary Cluster, a primary with
one replica behind a Sentinel, and a TLS-only server.

Each server runs from the ``redis-server`` binary on a free loopback port, in its own temp
directory, and is stopped by its PID (:class:`adapters.redis_server.RedisServer`, which the
pytest plugin uses too). Nothing here talks to a Redis the tests did not start.
Deployments start on first use and stop at the end of the session (``stop_all``).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

# The launcher is the package's own (the pytest plugin uses it too); re-exported here for the
# tests that import it from this module.
from adapters.redis_server import RedisServer, free_port, redis_server_binary

__all__ = [
    "REDIS_SERVER",
    "Cluster",
    "RedisServer",
    "SentinelSetup",
    "cluster",
    "free_port",
    "self_signed",
    "sentinel",
    "standalone",
    "stop_all",
    "tls_server",
]

try:
    REDIS_SERVER = redis_server_binary()
except FileNotFoundError:
    REDIS_SERVER = "/usr/bin/redis-server"  # as before: starting a server then fails clearly


class Cluster:
    """Three primaries, slots split evenly, no replicas."""

    def __init__(self) -> None:
        flags = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        flags += ["--cluster-node-timeout", "2000"]
        # A cluster node also listens on port + 10000 (the cluster bus): keep both free.
        self.nodes = [
            RedisServer(*flags, name="cluster", port=free_port(bus=True)) for _ in range(3)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        bounds = [0, 5461, 10923, 16384]
        for i, node in enumerate(self.nodes):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    states.append("cluster_state:ok" in info and "cluster_known_nodes:3" in info)
            if all(states):
                return self
            time.sleep(0.1)
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelSetup:
    """A primary, one replica, and one Sentinel watching them as ``mymaster``."""

    service = "mymaster"

    def __init__(self) -> None:
        self.primary = RedisServer(name="primary")
        self.replica = RedisServer(name="replica")
        self.sentinel = RedisServer(name="sentinel")

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"

    def start(self) -> SentinelSetup:
        self.primary.start()
        self.replica.args += ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        conf = self.sentinel.dir / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 3000\n"
        )
        self.sentinel.start(config=[str(conf), "--sentinel"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the replica has synced and follows the primary
            with self.replica.client() as replica:
                if replica.info("replication").get("master_link_status") == "up":
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("the test replica did not sync with its primary")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self.sentinel.client() as client:
                try:
                    master = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                    )
                except redis.RedisError:
                    master = None
            if master and int(master[1]) == self.primary.port:
                return self
            time.sleep(0.1)
        raise RuntimeError("the test Sentinel did not report its primary")

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with `cryptography` (PyJWT's crypto)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls_server(directory: Path) -> tuple[RedisServer, Path]:
    """A redis-server (not started yet) that speaks TLS only, with a certificate for
    127.0.0.1 written to ``directory``; returns it and the certificate to trust."""
    cert, key = self_signed(directory)
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    port = free_port()
    server = RedisServer(
        *tls, "--tls-port", str(port), "--port", "0", name="tls", port=port,
        client_options={"ssl": True, "ssl_ca_certs": str(cert)},
    )  # fmt: skip
    return server, cert


_started: dict[str, object] = {}
_mutex = threading.Lock()


def _ensure(name: str, make: Callable[[], Any]) -> Any:
    with _mutex:
        if name not in _started:
            deployment = make()
            try:
                deployment.start()
            except BaseException:
                deployment.stop()  # a half-started deployment leaves no process behind
                raise
            _started[name] = deployment
        return _started[name]


def standalone() -> RedisServer:
    server: RedisServer = _ensure("standalone", lambda: RedisServer(name="standalone"))
    return server


def cluster() -> Cluster:
    deployment: Cluster = _ensure("cluster", Cluster)
    return deployment


def sentinel() -> SentinelSetup:
    deployment: SentinelSetup = _ensure("sentinel", SentinelSetup)
    return deployment


def stop_all() -> None:
    with _mutex:
        for deployment in _started.values():
            deployment.stop()  # type: ignore[attr-defined]
        _started.clear()


atexit.register(stop_all)
