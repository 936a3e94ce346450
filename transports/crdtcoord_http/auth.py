"""Who may call what: peer signatures (HMAC-SHA256 with the cluster secret) and client tokens.

**Peers** sign every request with the cluster secret. The signature covers the method, the path,
a timestamp, a nonce, the sender's node id, the receiver's node id, the sender's advertised
address and the SHA-256 of the body, so a request cannot be altered, sent to another route or
another node, attributed to another sender, or made to point peers at another address. A
receiver refuses a timestamp outside its skew window, one from before its own process started
(its replay cache starts empty), and a nonce it has already seen inside the window (the cache
holds each nonce as long as its timestamp could still be accepted). Responses carrying reply
messages are signed too, bound to the request's nonce.

**Clients** (operators, other languages) present a bearer token from the node's token file. A
token is not the secret and cannot sign anything: the two are checked by different code paths,
and a token file containing the cluster secret is refused at start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path

from crdtcoord import CrdtcoordError

__all__ = [
    "HEADER_ADDR",
    "HEADER_NODE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TO",
    "HEADER_TIMESTAMP",
    "AuthError",
    "ConfigError",
    "ReplayCache",
    "Signer",
    "TokenSet",
    "load_secret",
]

HEADER_NODE = "X-Crdtcoord-Node"
HEADER_ADDR = "X-Crdtcoord-Addr"
HEADER_TIMESTAMP = "X-Crdtcoord-Timestamp"
HEADER_NONCE = "X-Crdtcoord-Nonce"
HEADER_SIGNATURE = "X-Crdtcoord-Signature"
HEADER_TO = "X-Crdtcoord-To"

#: The smallest secret accepted (bytes): a short secret can be guessed offline from one request.
MIN_SECRET_BYTES = 16


class ConfigError(CrdtcoordError, ValueError):
    """A node cannot start as configured (e.g. a public address without a secret); the
    message says why and what to change."""


class AuthError(CrdtcoordError):
    """A request is not authenticated; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """Read a cluster secret file (surrounding whitespace is ignored); at least 16 bytes."""
    p = Path(path)
    try:
        raw = p.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the secret file {p}: {e.strerror}") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the secret in {p} is {len(raw)} bytes; use at least {MIN_SECRET_BYTES} random bytes"
            " (e.g. `python -c 'import secrets; print(secrets.token_hex(32))' > secret`)"
        )
    return raw


def _body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Signer:
    """Signs and verifies peer requests and responses with the cluster secret."""

    def __init__(self, secret: bytes, *, skew: float = 30.0, clock: object = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"a cluster secret has at least {MIN_SECRET_BYTES} bytes")
        self._key = secret
        self.skew = skew
        self._clock = clock
        self.replays = ReplayCache(window=2 * skew)
        #: requests signed before this (ms) are refused: the replay cache does not remember
        #: what an earlier process of this node accepted
        self.not_before_ms = int(self._now() * 1000)

    def _now(self) -> float:
        clock = self._clock
        assert callable(clock)
        t = clock()
        assert isinstance(t, float | int)
        return float(t)

    def _mac(self, *parts: str) -> str:
        msg = "\n".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign_request(
        self,
        method: str,
        path: str,
        node: str,
        body: bytes,
        *,
        to: str = "",
        addr: str = "",
    ) -> dict[str, str]:
        """Headers that authenticate one request of ``node`` to the node ``to`` (its id; empty
        while the sender does not know it yet), advertising ``addr`` (sent as a header too)."""
        ts = str(int(self._now() * 1000))
        nonce = secrets.token_hex(16)
        sig = self._mac("req/v2", method.upper(), path, ts, nonce, node, to, addr, _body_hash(body))
        h = {
            HEADER_NODE: node,
            HEADER_TIMESTAMP: ts,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: sig,
        }
        if to:
            h[HEADER_TO] = to
        if addr:
            h[HEADER_ADDR] = addr
        return h

    def check_headers(self, headers: object) -> tuple[str, str, str, str]:
        """The cheap checks, before the body is read: the headers are present and well formed,
        the timestamp is inside the skew window and not from before this process started.
        Returns (node, timestamp, nonce, signature)."""
        get = getattr(headers, "get", None)
        assert get is not None
        node, ts, nonce, sig = (
            get(HEADER_NODE),
            get(HEADER_TIMESTAMP),
            get(HEADER_NONCE),
            get(HEADER_SIGNATURE),
        )
        if not (node and ts and nonce and sig):
            raise AuthError(
                "unsigned", "peer requests must carry the X-Crdtcoord-* signature headers"
            )
        if not (ts.isascii() and ts.isdigit()) or len(ts) > 16:
            raise AuthError("bad_timestamp", "the timestamp must be integer milliseconds")
        if not (_is_hex(nonce, 32) and _is_hex(sig, 64)):
            raise AuthError("bad_signature", "malformed nonce or signature")
        ms = int(ts)
        drift = abs(ms / 1000 - self._now())
        if drift > self.skew:
            raise AuthError(
                "clock_skew",
                f"request timestamp is {drift:.1f} s away from this node's clock (window"
                f" {self.skew:.0f} s): check NTP on both hosts",
            )
        if ms < self.not_before_ms:
            raise AuthError(
                "before_start", "signed before this node's process started (the sender re-signs)"
            )
        return node, ts, nonce, sig

    def verify_request(
        self,
        method: str,
        path: str,
        parts: tuple[str, str, str, str],
        body: bytes,
        *,
        me: str,
        to: str | None,
        addr: str | None,
    ) -> None:
        """Check the signature over the body — made for this node (``me``), or for no node in
        particular when the sender did not know its id yet (``to``: the header) — and over the
        advertised address ``addr``; then record the nonce (a replay fails here)."""
        node, ts, nonce, sig = parts
        if to not in (None, "", me):
            raise AuthError("wrong_receiver", f"signed for node {to!r}, this is {me!r}")
        want = self._mac(
            "req/v2", method.upper(), path, ts, nonce, node, to or "", addr or "", _body_hash(body)
        )
        if not hmac.compare_digest(want.encode(), sig.encode()):
            raise AuthError("bad_signature", "the signature does not match (wrong secret?)")
        if not self.replays.add(nonce, int(ts) / 1000, self._now()):
            raise AuthError("replayed", "this request was already received")

    def sign_response(self, request_nonce: str, body: bytes) -> str:
        return self._mac("resp/v1", request_nonce, _body_hash(body))

    def verify_response(self, request_nonce: str, body: bytes, sig: str | None) -> None:
        if not sig or not _is_hex(sig, 64):
            raise AuthError("bad_signature", "the response is not signed with the cluster secret")
        if not hmac.compare_digest(self.sign_response(request_nonce, body).encode(), sig.encode()):
            raise AuthError("bad_signature", "the response is not signed with the cluster secret")


_HEX = frozenset("0123456789abcdef")


def _is_hex(x: str, n: int) -> bool:
    return len(x) == n and all(c in _HEX for c in x)


class ReplayCache:
    """Nonces seen, each kept until its timestamp leaves the acceptance window; bounded (when
    full, new requests are refused rather than old nonces forgotten: forgetting would let a
    replay through)."""

    def __init__(self, window: float, capacity: int = 1_000_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> expiry, in arrival order

    def add(self, nonce: str, ts: float, now: float) -> bool:
        """Record ``nonce``; False if it was seen (or the cache is full of live nonces)."""
        seen = self._seen
        while seen:
            first = next(iter(seen.values()))
            if first > now:
                break
            seen.popitem(last=False)
        if nonce in seen:
            return False
        if len(seen) >= self.capacity:
            return False
        # expiry: after the timestamp can no longer pass the skew check (arrival order is
        # not expiry order, so an entry may outlive its expiry a little: never the reverse)
        seen[nonce] = max(ts, now) + self.window
        return True

    def __len__(self) -> int:
        return len(self._seen)


class TokenSet:
    """Client bearer tokens (one per line in the token file; ``#`` comments; an optional
    ``name:`` prefix names the client in logs)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens  # token -> client name

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, secret: bytes | None = None) -> TokenSet:
        p = Path(path)
        try:
            lines = p.read_text("utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read the token file {p}: {e.strerror}") from None
        tokens: dict[str, str] = {}
        for name, tok in cls.parse("\n".join(lines), str(p)):
            if secret is not None and hmac.compare_digest(tok.encode(), secret):
                raise ConfigError(
                    f"{p}: the token {name!r} is the cluster secret; client tokens must differ"
                    " (a client must never be able to sign peer messages)"
                )
            tokens[tok] = name
        if not tokens:
            raise ConfigError(f"the token file {p} holds no token")
        return cls(tokens)

    def check(self, token: str | None) -> str:
        """The client name for ``token``; :class:`AuthError` if unknown."""
        if not token:
            raise AuthError("no_token", "send 'Authorization: Bearer <token>' (or ?token=)")
        given = token.encode("utf-8", "surrogateescape")
        for tok, name in self._tokens.items():  # constant time per candidate
            if hmac.compare_digest(tok.encode(), given):
                return name
        raise AuthError("bad_token", "unknown client token")

    @staticmethod
    def parse(text: str, where: str = "token file") -> list[tuple[str, str]]:
        """``(name, token)`` per token line of a token file (blank lines and ``#`` comments
        skipped, surrounding whitespace ignored, an optional ``name:`` prefix)."""
        out = []
        for i, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, tok = line.rpartition(":") if ":" in line else ("", "", line)
            tok = tok.strip()
            if len(tok) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"{where}:{i}: a token has at least {MIN_SECRET_BYTES} characters"
                )
            out.append((name.strip() or f"token{i}", tok))
        return out

    def __len__(self) -> int:
        return len(self._tokens)
