"""The screening node's settings, the secret that keys patient hashes, and the HTTP bearer tokens.

Secure by default: the node listens on 127.0.0.1. On any other interface it refuses to start unless HTTP has a
token file and DICOM has an allow-list of calling AE titles (a PACS on the network must be named to be heard).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cxrad.errors import UserError
from cxrad.files import atomic_write_text
from cxrad.imaging.bounds import MAX_FILE_BYTES

#: AE titles: 1-16 characters of the DICOM default repertoire, no backslash or control characters
AE_TITLE = re.compile(r"^[ -\[\]-~]{1,16}$")
TOKEN_LINE = re.compile(r"^sha256:([0-9a-f]{64})$")
SECRET_BYTES = 32


def valid_ae_title(title: str) -> bool:
    return bool(AE_TITLE.match(title)) and bool(title.strip())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Destination:
    """Where results go by C-STORE: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        m = re.match(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$", text.strip())
        if not m or not valid_ae_title(m["aet"]) or not 1 <= int(m["port"]) <= 65535:
            raise UserError(f"--destination must look like AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242), not {text!r}")
        return cls(m["aet"], m["host"], int(m["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class NodeConfig:
    """Everything ``cxrad serve`` is told. ``state_dir`` holds the spool, the outbox, the SQLite database (unless
    ``database`` names another) and the node's secret."""

    state_dir: Path
    host: str = "127.0.0.1"
    http_port: int = 8080  # 0: no HTTP
    dicom_port: int = 11112  # 0: no DICOM listener
    ae_title: str = "CXRAD"
    allowed_aets: tuple[str, ...] = ()
    destination: Destination | None = None
    send_heatmap: bool = False
    webhook: str | None = None
    database: str | None = None
    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_upload_bytes: int = MAX_FILE_BYTES
    request_timeout_s: float = 60.0
    network_timeout_s: float = 30.0
    max_associations: int = 16
    spool_max_bytes: int = 4 * 1024**3
    spool_min_free_bytes: int = 256 * 1024**2
    batch_size: int = 16
    max_wait_ms: float = 5.0
    decode_workers: int | None = None
    model_threads: int | None = None
    delivery_attempts: int = 6
    delivery_backoff_s: float = 2.0
    resend_unknown: bool = False
    token_hashes: frozenset = field(default=frozenset(), repr=False)

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{Path(self.state_dir).resolve() / 'node.db'}"

    def check(self) -> "NodeConfig":
        """Raise UserError for settings that do not work together or are not safe; load the token hashes."""
        for name in ("http_port", "dicom_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 (off) and 65535")
        if not self.http_port and not self.dicom_port:
            raise UserError("both --http-port and --dicom-port are 0: the node would receive nothing")
        if not valid_ae_title(self.ae_title):
            raise UserError(f"--ae-title {self.ae_title!r} is not a valid AE title (1-16 characters, no backslash)")
        for aet in self.allowed_aets:
            if not valid_ae_title(aet):
                raise UserError(f"--allow-aet {aet!r} is not a valid AE title")
        if self.batch_size < 1 or self.max_wait_ms < 0 or self.delivery_attempts < 1:
            raise UserError("--batch-size and --delivery-attempts must be at least 1, --max-wait-ms at least 0")
        if not 1 <= self.max_upload_bytes <= MAX_FILE_BYTES:
            raise UserError(f"--max-upload-mb must be at most the reader's limit ({MAX_FILE_BYTES // 2**20} MB)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UserError("TLS needs both --tls-cert and --tls-key")
        if self.webhook and not re.match(r"^https?://", self.webhook):
            raise UserError("--webhook must be an http:// or https:// URL")
        if self.tokens_file is not None:
            self.token_hashes = load_token_hashes(self.tokens_file)
        if not is_loopback(self.host):
            if self.http_port and not self.token_hashes:
                raise UserError(f"HTTP on {self.host} (not loopback) needs bearer tokens: give --tokens FILE "
                                "(make one with `cxrad serve --new-token FILE`)")
            if self.dicom_port and not self.allowed_aets:
                raise UserError(f"DICOM on {self.host} (not loopback) needs an allow-list: give --allow-aet AET "
                                "for each PACS or modality that may send")
        return self


# ------------------------------------------------------------------------------------------------- tokens
def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def load_token_hashes(path) -> frozenset:
    """The token digests of a token file: one ``sha256:HEX`` line per token (blank lines and # comments are
    ignored). Plain tokens are refused, so a leaked file does not leak them."""
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--tokens {path}: cannot read it ({exc})") from None
    hashes = set()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = TOKEN_LINE.match(line)
        if not m:
            raise UserError(f"--tokens {path}, line {number}: expected sha256:<64 hex digits> (the token's hash, "
                            "as `cxrad serve --new-token` writes it), not a plain token")
        hashes.add(bytes.fromhex(m[1]))
    if not hashes:
        raise UserError(f"--tokens {path}: no token in it")
    return frozenset(hashes)


def token_ok(presented: str, hashes: frozenset) -> bool:
    digest = token_hash(presented)
    ok = False
    for h in hashes:  # compare with every one, in constant time each
        ok |= hmac.compare_digest(digest, h)
    return ok


def new_token(path) -> str:
    """A fresh random token; its hash is appended to the token file ``path`` (created 0600)."""
    path = Path(path)
    token = secrets.token_urlsafe(32)
    before = path.read_text("utf-8") if path.exists() else "# cxrad serve bearer tokens (hashes only)\n"
    if before and not before.endswith("\n"):
        before += "\n"
    atomic_write_text(path, before + f"sha256:{token_hash(token).hex()}\n")
    os.chmod(path, 0o600)
    return token


# ------------------------------------------------------------------------------------------------- secret
def node_secret(state_dir) -> bytes:
    """The node's key for patient-ID hashes: ``STATE/secret.key``, made once (0600) from the OS's random
    source. Keep it with the database: without it, the same patient gets a new hash."""
    path = Path(state_dir) / "secret.key"
    if not path.exists():
        # written beside it, then linked into place: a crash leaves no empty key, and two starts agree on one
        tmp = path.with_name(f".secret.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise UserError(f"{path} is damaged (expected {SECRET_BYTES} bytes); restore it from a backup")
    return data


def patient_key(secret: bytes, patient_id: str | None) -> str | None:
    """A keyed hash (HMAC-SHA256) of a patient ID: the same patient gets the same key on this node, and the
    key does not give the ID back without the secret."""
    if patient_id is None or not str(patient_id).strip():
        return None
    return hmac.new(secret, str(patient_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()
