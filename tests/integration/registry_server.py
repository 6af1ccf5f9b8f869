"""A real registry for tests: Debian's docker-registry (distribution 2.8.2) on loopback.

Each RegistryServer runs `docker-registry serve CONFIG` with a config of its own
(never the packaged one) on 127.0.0.1 and a free port, storing blobs in a temp dir.
It can be killed mid-transfer and restarted on the same port and storage, which is
how the resume tests interrupt a download. Auth variants:

- htpasswd: basic auth with a bcrypt htpasswd file (python `bcrypt`, else `htpasswd -B`);
- token: Docker's token auth, with TokenServer below issuing RS256 JWTs signed by a
  throwaway key whose self-signed certificate is both the x5c header and the
  registry's rootcertbundle. Signing uses the openssl CLI, so no Python crypto
  package is needed.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def registry_available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash as htpasswd -B writes it (distribution only accepts bcrypt)."""
    try:
        import bcrypt
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode())
    if shutil.which("htpasswd"):
        out = subprocess.run(
            ["htpasswd", "-nbB", "-C", "5", "user", password],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip().split(":", 1)[1]
    raise RuntimeError("need python bcrypt or htpasswd (apache2-utils) for basic auth tests")


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(f"{user}:{bcrypt_hash(pw)}\n" for user, pw in users.items()))
    return path


@dataclass
class RegistryServer:
    """One docker-registry process; start(), kill() mid-test, restart(), stop()."""

    workdir: Path
    auth_yaml: str = ""  # the `auth:` section, already indented
    port: int = 0
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve HTTPS
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> Path:
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n"
            "  level: info\n"
            "  formatter: text\n"
            "  accesslog:\n"
            "    disabled: false\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {self.storage}\n"
            "  delete:\n"
            "    enabled: true\n"
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            f"  secret: {self.secret}\n" + self._tls_yaml() + self.auth_yaml
        )
        return config

    def _tls_yaml(self) -> str:
        if self.tls is None:
            return ""
        cert, key = self.tls
        return f"  tls:\n    certificate: {cert}\n    key: {key}\n"

    def start(self) -> RegistryServer:
        """Start on a free port (kept across restarts); wait until /v2/ answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        fixed_port = self.port != 0
        for _ in range(3):
            if not fixed_port:
                self.port = free_port()
            self._spawn()
            if self._wait_ready():
                return self
            self._reap()
            if fixed_port and "address already in use" not in self.log_text():
                break
        raise RuntimeError(f"docker-registry did not start:\n{self.log_text()[-3000:]}")

    def _spawn(self) -> None:
        config = self._write_config()
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                cwd=self.workdir,
            )
        finally:
            log.close()

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            conn = (
                http.client.HTTPSConnection(
                    "127.0.0.1", self.port, timeout=1, context=ssl._create_unverified_context()
                )
                if self.tls
                else http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            )
            try:
                conn.request("GET", "/v2/")
                if conn.getresponse().status in (200, 401):
                    return True
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        return False

    def _reap(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: connections drop mid-transfer, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    def restart(self) -> None:
        """Start again on the same port and storage."""
        self.kill()
        self.start()


def make_tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA bundle) and its key."""
    cert, key = directory / "tls-cert.pem", directory / "tls-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def htpasswd_auth_yaml(htpasswd: Path) -> str:
    return f"auth:\n  htpasswd:\n    realm: hull-test\n    path: {htpasswd}\n"


def token_auth_yaml(realm: str, service: str, issuer: str, cert: Path) -> str:
    return (
        "auth:\n  token:\n"
        f"    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n"
        f"    rootcertbundle: {cert}\n"
    )


# ---------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    """A throwaway RSA key and self-signed certificate, used through the openssl CLI."""

    def __init__(self, directory: Path) -> None:
        self.key = directory / "token-key.pem"
        self.cert = directory / "token-cert.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-keyout", str(self.key), "-out", str(self.cert),
                "-days", "2", "-subj", "/CN=hull-test-token-issuer",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode("ascii")

    def sign_jwt(self, claims: dict[str, object]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return signing_input + "." + _b64url(signature)


def parse_scope(scope: str) -> dict[str, object] | None:
    """`repository:foo/bar:pull,push` -> an access claim entry."""
    parts = scope.split(":")
    if len(parts) < 3:
        return None
    return {
        "type": parts[0],
        "name": ":".join(parts[1:-1]),
        "actions": [a for a in parts[-1].split(",") if a],
    }


@dataclass
class TokenRequest:
    account: str | None
    scopes: list[str]
    status: int


class TokenServer:
    """Docker token auth's token endpoint: basic credentials in, RS256 JWT out.

    Known users get every action they ask for; anonymous requests get a token with no
    access (so the registry refuses them); wrong passwords get 401.
    """

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        service: str = "hull-test-registry",
        issuer: str = "hull-test-issuer",
    ) -> None:
        self.users = users
        self.service = service
        self.issuer = issuer
        self.key = SigningKey(directory)
        self.requests: list[TokenRequest] = []
        self.grant: Callable[[str | None, dict[str, object]], bool] = lambda account, access: (
            account is not None
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def auth_yaml(self) -> str:
        return token_auth_yaml(self.realm, self.service, self.issuer, self.key.cert)

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                scopes = [s for value in query.get("scope", []) for s in value.split(" ")]
                if url.path != "/token":
                    self._answer(404, {"error": "not found"})
                    return
                account = self._account()
                if account is False:
                    server.requests.append(TokenRequest(None, scopes, 401))
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                    return
                who = account if isinstance(account, str) else None
                server.requests.append(TokenRequest(who, scopes, 200))
                self._answer(200, server.issue(who, scopes))

            def _account(self) -> str | None | bool:
                """The user name, None for anonymous, False for bad credentials."""
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return None
                try:
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except ValueError:
                    return False
                if server.users.get(user) != password:
                    return False
                return user

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def issue(self, account: str | None, scopes: list[str]) -> dict[str, object]:
        now = int(time.time())
        access = [
            entry
            for entry in (parse_scope(s) for s in scopes)
            if entry is not None and self.grant(account, entry)
        ]
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = self.key.sign_jwt(claims)
        return {"token": token, "access_token": token, "expires_in": 300}
