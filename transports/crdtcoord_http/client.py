"""A small synchronous client of a node's JSON API (stdlib only: the CLI starts fast).

Example::

    c = Client("http://127.0.0.1:7001", token="...")
    c.op("hits", "inc", n=2, consistency="majority", op_id="job-17")
    print(c.get("hits")["value"])
    for change in c.watch("cfg/"):
        print(change["key"], change["value"])
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from crdtcoord import CrdtcoordError

__all__ = ["Client", "ClientError"]


class ClientError(CrdtcoordError):
    """A request failed: ``status`` (0: the node could not be reached), ``code`` (the node's
    error code) and a readable message."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{detail} ({code}{', HTTP ' + str(status) if status else ''})")


class Client:
    """Calls one node (``url``: ``http(s)://HOST:PORT``) with an optional bearer token.

    ``ssl_context`` verifies an HTTPS node (and presents a client certificate under mutual
    TLS); :meth:`tls` builds one from PEM files."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url
        self.token = token
        self.timeout = timeout
        self.ssl_context = ssl_context

    @staticmethod
    def tls(
        ca: str | None = None, cert: str | None = None, key: str | None = None
    ) -> ssl.SSLContext:
        """An SSL context trusting ``ca`` (else the system's CAs) and presenting ``cert`` and
        ``key`` (mutual TLS)."""
        ctx = ssl.create_default_context(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    def _open(self, req: urllib.request.Request, timeout: float | None) -> Any:
        return urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context)

    def _request(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._open(req, timeout or self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise self._error(e) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(0, "unreachable", f"cannot reach {self.url}: {reason}") from None
        return json.loads(raw) if raw else None

    def _error(self, e: urllib.error.HTTPError) -> ClientError:
        try:
            info = json.loads(e.read() or b"{}")
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
        return ClientError(
            e.code, str(info.get("error", "http_error")), str(info.get("detail", e.reason))
        )

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/v1/health")
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/v1/status")
        return out

    def keys(self, prefix: str = "") -> list[str]:
        q = "?" + urllib.parse.urlencode({"prefix": prefix}) if prefix else ""
        out: list[str] = self._request("GET", "/v1/keys" + q)["keys"]
        return out

    def get(self, key: str, consistency: str | None = None) -> dict[str, Any]:
        """``{"key", "type", "value"}``; :class:`ClientError` 404 if the node has no such key."""
        q = "?" + urllib.parse.urlencode({"consistency": consistency}) if consistency else ""
        out: dict[str, Any] = self._request("GET", "/v1/keys/" + _quote(key) + q)
        return out

    def op(
        self,
        key: str,
        op: str,
        *,
        consistency: str | None = None,
        op_id: str | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Apply ``op`` (inc, dec, add, remove, set) with its fields (``n``, ``element``,
        ``value``); returns the key's value after it."""
        body: dict[str, Any] = {"op": op, **fields}
        if consistency:
            body["consistency"] = consistency
        if op_id:
            body["op_id"] = op_id
        if timeout:
            body["timeout"] = timeout
        wait = (timeout or 5.0) + self.timeout
        out: dict[str, Any] = self._request("POST", "/v1/keys/" + _quote(key), body, timeout=wait)
        return out

    def lease_acquire(
        self, name: str, holder: str, ttl: float, mode: str | None = None
    ) -> dict[str, Any]:
        """Acquire (or renew) lease ``name`` for ``holder``: the grant, with its fencing token;
        :class:`ClientError` ``held`` (409) names the current holder."""
        body: dict[str, Any] = {"holder": holder, "ttl": ttl}
        if mode:
            body["mode"] = mode
        out: dict[str, Any] = self._request("POST", f"/v1/leases/{_quote(name)}/acquire", body)
        return out

    def lease_release(self, name: str, holder: str) -> bool:
        out = self._request("POST", f"/v1/leases/{_quote(name)}/release", {"holder": holder})
        return bool(out["released"])

    def lease_show(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", f"/v1/leases/{_quote(name)}")
        return out

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Any JSON route (``docs/operations.md`` lists them): elections, barriers,
        semaphores, rate limiters... Errors raise :class:`ClientError`."""
        return self._request(method, path, body, timeout=timeout)

    def metrics(self) -> str:
        req = urllib.request.Request(self.url + "/metrics")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._open(req, self.timeout) as r:
                text: str = r.read().decode()
                return text
        except urllib.error.HTTPError as e:
            raise self._error(e) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise ClientError(0, "unreachable", f"cannot reach {self.url}: {e}") from None

    def watch(
        self, prefix: str = "", since: str | None = None, *, idle_timeout: float | None = 60.0
    ) -> Iterator[dict[str, Any]]:
        """Follow the change feed: each change as a dict (``key``, ``value``, ``origin``,
        ``cursor``); a ``{"event": "compacted", ...}`` dict if the node cannot continue from
        ``since`` (resume from its ``cursor`` after using its ``snapshot``). A stream that ends
        (the node stops, the connection drops) raises :class:`ClientError` ``disconnected``:
        resume with ``since`` = the last cursor seen."""
        params = {"prefix": prefix}
        if since:
            params["since"] = since
        req = urllib.request.Request(self.url + "/v1/watch?" + urllib.parse.urlencode(params))
        req.add_header("Accept", "text/event-stream")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            r = self._open(req, idle_timeout)
        except urllib.error.HTTPError as e:
            raise self._error(e) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(0, "unreachable", f"cannot reach {self.url}: {reason}") from None
        with r:
            event, data = "message", list[str]()
            while True:
                try:
                    raw = r.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise ClientError(0, "disconnected", f"{self.url}: stream cut: {e}") from None
                if not raw:
                    # the node ended the stream (it shuts down) or the connection dropped
                    raise ClientError(0, "disconnected", f"{self.url} closed the stream")
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if data:
                        item = json.loads("\n".join(data))
                        if event != "message":
                            item["event"] = event
                        yield item
                        if event == "compacted":
                            return
                    event, data = "message", list[str]()
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())


def _quote(key: str) -> str:
    return urllib.parse.quote(key, safe="")
