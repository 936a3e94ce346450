"""The node's HTTP routes: the peer protocol, the JSON client API, status and metrics.

=========================  ==================  ===========================================
route                      who                 what
=========================  ==================  ===========================================
``GET /v1/health``         anyone              liveness, node id, cluster (peers resolve
                                               URLs with it)
``POST /v1/messages``      peers (signature)   one engine message; replies in the response
``GET /v1/keys``           clients (token)     keys (``?prefix=``)
``GET /v1/keys/{key}``     clients (token)     value (``?consistency=majority`` for a
                                               quorum read)
``POST /v1/keys/{key}``    clients (token)     apply an op: JSON ``{"op": "inc", ...}``
``GET /v1/watch``          clients (token)     change feed as server-sent events
``GET /v1/status``         clients (token)     node, peers, lag, keys, sync counters
``GET /metrics``           clients (token)     Prometheus text
``GET /v1/yjs/{name}``     clients (token)     WebSocket: y-protocols sync + awareness of the
                                               document ``name`` (stock ``y-websocket``)
=========================  ==================  ===========================================

With a cluster secret, client routes need a bearer token (``Authorization: Bearer T`` or
``?token=T``) from the node's token file, and peer routes need a signature; a token is never
accepted on a peer route. Without a secret (protected mode, loopback only) client routes are open
unless a token file is given. Errors are JSON ``{"error": code, "detail": text}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import msgpack
from aiohttp import web

from crdtcoord import (
    ConsistencyTimeout,
    CrdtcoordError,
    GCounter,
    IncompatibleMerge,
    InsufficientRights,
    InvalidArgument,
    LeaseHeld,
    LWWRegister,
    ORSet,
    PNCounter,
)
from crdtcoord.clocks.hlc import Timestamp
from crdtcoord.consensus.base import ConsensusUnavailable, LeaseLost
from crdtcoord.documents import Document
from crdtcoord.documents.sync import ProtocolViolation, Room
from crdtcoord.engine import LOCAL, Consistency, ProtocolError
from crdtcoord.engine.store import check_key
from crdtcoord.host import StorageError
from crdtcoord.runtime.node import NotRunning
from crdtcoord.runtime.transport import NodePort
from crdtcoord_http.auth import HEADER_ADDR, HEADER_SIGNATURE, HEADER_TO, AuthError

if TYPE_CHECKING:
    from crdtcoord.runtime import Node
    from crdtcoord_http.transport import HttpTransport

__all__ = ["build_app", "to_json"]

_TRANSPORT: web.AppKey[HttpTransport] = web.AppKey("transport")


def finite_number(v: object) -> bool:
    """A JSON number usable as seconds: an int or float, not a bool, finite (an int too large
    for a float is not)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def error(status: int, code: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def to_json(v: Any) -> Any:
    """A CRDT value as JSON: sets as sorted lists, bytes as ``{"base64": ...}``, map keys as
    strings."""
    if isinstance(v, set | frozenset):
        items = [to_json(x) for x in v]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(v, bytes | bytearray):
        return {"base64": base64.b64encode(v).decode()}
    if isinstance(v, dict):
        return {k if isinstance(k, str) else repr(k): to_json(x) for k, x in v.items()}
    if isinstance(v, Timestamp):
        return v.wall  # (ms since the epoch; the logical part only orders equal walls)
    if isinstance(v, tuple) and hasattr(v, "_asdict"):  # a record (a lease's LeaseInfo)
        return {k: to_json(x) for k, x in v._asdict().items()}
    if isinstance(v, list | tuple):
        return [to_json(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def _foreign_origin(request: web.Request) -> str | None:
    """The ``Origin`` a browser sent, when it is not a page served from this machine's
    loopback (None: no Origin, i.e. not a browser, or a loopback one)."""
    from urllib.parse import urlsplit

    from crdtcoord_http.transport import is_loopback

    origin = request.headers.get("Origin")
    if origin is None:
        return None
    try:
        host = urlsplit(origin).hostname or ""
    except ValueError:
        return origin
    return None if is_loopback(host.strip("[]")) else origin


def _remote_is_loopback(request: web.Request) -> bool:
    from crdtcoord_http.transport import is_loopback

    peer = request.transport.get_extra_info("peername") if request.transport else None
    host = peer[0] if isinstance(peer, tuple) and peer else ""
    return isinstance(host, str) and is_loopback(host)


class _YjsSocket(web.WebSocketResponse):
    """A WebSocket that closes an oversized frame with 4413 instead of 1009: ``y-websocket``
    retries every code but 4400-4499, and would upload the same frame again forever."""

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if code == 1009:
            code, message = 4413, b"frame too large (max_yjs_frame): not retried"
        return await super().close(code=code, message=message, drain=drain)


class _Bucket:
    """A token bucket per client (rate per second, burst of one second)."""

    __slots__ = ("last", "level")

    def __init__(self, rate: float) -> None:
        self.level = rate
        self.last = time.monotonic()


def build_app(t: HttpTransport, node: NodePort) -> web.Application:
    """The aiohttp application of one node's transport."""
    lim = t.limits
    cfg = getattr(node, "config", None)
    max_body = lim.max_body or (int(getattr(cfg, "max_message_bytes", 1 << 20)) + 4096)

    @web.middleware
    async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        """Routing errors (404, 405) as JSON, like every other error."""
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except web.HTTPException as e:
            if e.status < 400:
                raise
            code = {404: "no_such_route", 405: "method_not_allowed"}.get(e.status, "http_error")
            detail = e.text or e.reason
            if e.status == 404:
                detail = f"no route {request.path}; see docs/operations.md for the routes"
            elif e.status == 405:
                detail = f"{request.method} not allowed on {request.path}"
            return error(e.status, code, detail)

    app = web.Application(client_max_size=max_body, middlewares=[json_errors])
    app[_TRANSPORT] = t
    watchers: dict[web.StreamResponse, web.Request] = {}
    buckets: dict[str, _Bucket] = {}
    full = node if hasattr(node, "status") and hasattr(node, "apply") else None

    # ---------------------------------------------------------------- peer protocol

    async def messages(request: web.Request) -> web.StreamResponse:
        """POST /v1/messages: one signed engine message; replies return in the response."""
        if t._closing:
            return error(503, "closing", "the node is shutting down", **{"Retry-After": "1"})
        parts = None
        if t.signer is not None:
            try:
                parts = t.signer.check_headers(request.headers)
            except AuthError as e:
                t.counters.refuse(e.reason)
                return error(401, e.reason, str(e))
            sender = parts[0]
        else:
            if not _remote_is_loopback(request):
                t.counters.refuse("not_loopback")
                return error(403, "not_loopback", "protected mode: loopback peers only")
            sender = request.headers.get("X-Crdtcoord-Node", "")
        length = request.content_length
        if length is not None and length > max_body:
            t.counters.refuse("too_large")
            return error(413, "too_large", f"body of {length} bytes; the limit is {max_body}")
        pending = _pending_writes(node)
        if pending > lim.max_pending_writes:
            t.counters.refuse("storage_behind")
            return error(503, "storage_behind", "the disk is behind", **{"Retry-After": "1"})
        try:
            # (bounded: a body that trickles in must not hold the connection for long)
            body = await asyncio.wait_for(request.read(), lim.request_timeout)
        except web.HTTPRequestEntityTooLarge:
            t.counters.refuse("too_large")
            return error(413, "too_large", f"the limit is {max_body} bytes")
        except TimeoutError:
            t.counters.refuse("slow_body")
            return error(408, "slow_body", f"the body took over {lim.request_timeout} s")
        except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            t.counters.refuse("connection_lost")  # (the peer went away mid-body: not an error)
            return error(400, "connection_lost", "the connection closed before the body ended")
        if parts is not None:
            assert t.signer is not None
            try:
                t.signer.verify_request(
                    "POST",
                    request.path,
                    parts,
                    body,
                    me=node.node_id,
                    to=request.headers.get(HEADER_TO),
                    addr=request.headers.get(HEADER_ADDR),
                )
            except AuthError as e:
                t.counters.refuse(e.reason)
                return error(401, e.reason, str(e))
        if not body:
            t.counters.refuse("malformed")
            return error(400, "malformed", "empty body")
        # only authenticated, complete requests take a processing slot
        if t._inflight >= lim.max_inflight:
            t.counters.refuse("overloaded")
            return error(503, "overloaded", "too many requests in flight", **{"Retry-After": "1"})
        t._inflight += 1
        try:
            try:
                replies = t.take(sender, body)
            except ProtocolError as e:
                t.counters.refuse(e.code)
                return error(400, e.code, e.reason)
            except (InvalidArgument, NotRunning) as e:  # the node is starting or stopping
                return error(503, "not_running", str(e), **{"Retry-After": "1"})
            except StorageError as e:  # the disk failed: the node stopped taking writes
                t.counters.refuse("storage_failed")
                return error(503, "storage_failed", str(e), **{"Retry-After": "5"})
            t.heard_address(sender, request.headers.get(HEADER_ADDR))
            if not replies:
                return web.Response(status=204)
            out = msgpack.packb(replies, use_bin_type=True)
            headers = {"Content-Type": "application/x-msgpack"}
            if t.signer is not None and parts is not None:
                headers[HEADER_SIGNATURE] = t.signer.sign_response(parts[2], out)
            return web.Response(body=out, headers=headers)
        finally:
            t._inflight -= 1

    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "node": node.node_id,
                "cluster": getattr(cfg, "cluster_id", None),
                "secured": t.signer is not None,
            }
        )

    # ---------------------------------------------------------------- client API

    def client_auth(request: web.Request) -> web.Response | None:
        """None if the caller may use the client API, else the error response."""
        token = None
        h = request.headers.get("Authorization", "")
        if h.startswith("Bearer "):
            token = h[7:].strip()
        elif "token" in request.query:
            token = request.query["token"]
        if t.tokens is None:
            if t.signer is not None:
                t.counters.refuse("no_client_tokens")
                return error(
                    401,
                    "no_client_tokens",
                    "this node has no client tokens: start it with --token-file",
                )
            if not _remote_is_loopback(request):
                t.counters.refuse("not_loopback")
                return error(403, "not_loopback", "protected mode: loopback clients only")
            foreign = _foreign_origin(request)
            if foreign is not None:
                # (a web page from elsewhere, open in a browser on this machine: without tokens
                # it would reach the node as a loopback client)
                t.counters.refuse("cross_origin")
                return error(
                    403,
                    "cross_origin",
                    f"protected mode: requests from web pages of {foreign!r} are refused (give"
                    " the node a token file: browsers then pass a token)",
                )
            name = "local"
        else:
            try:
                name = t.tokens.check(token)
            except AuthError as e:
                t.counters.refuse(e.reason)
                return error(401, e.reason, str(e), **{"WWW-Authenticate": "Bearer"})
        b = buckets.get(name)
        if b is None:
            b = buckets[name] = _Bucket(lim.client_rate)
        now = time.monotonic()
        b.level = min(lim.client_rate, b.level + (now - b.last) * lim.client_rate)
        b.last = now
        if b.level < 1:
            t.counters.refuse("rate_limited")
            wait = max(1, math.ceil((1 - b.level) / lim.client_rate))
            return error(429, "rate_limited", "too many requests", **{"Retry-After": str(wait)})
        b.level -= 1
        return None

    def running() -> Node:
        if full is None:
            raise web.HTTPNotFound(text="client API needs a crdtcoord Node")
        return full  # type: ignore[return-value]

    def consistency(request: web.Request, default: Consistency = LOCAL) -> Consistency:
        c = request.query.get("consistency")
        return default if c is None else Consistency.parse(c)

    async def keys(request: web.Request) -> web.Response:
        if (denied := client_auth(request)) is not None:
            return denied
        n = running()
        return web.json_response({"keys": n.keys(request.query.get("prefix", ""))})

    async def get_key(request: web.Request) -> web.Response:
        if (denied := client_auth(request)) is not None:
            return denied
        n = running()
        key = request.match_info["key"]
        try:
            level = consistency(request)
            if level is LOCAL:
                state = n.state(key)
            else:
                await n.read(key, consistency=level)
                state = n.state(key)
        except ConsistencyTimeout as e:
            return error(504, "consistency_timeout", str(e))
        except NotRunning as e:
            return error(503, "not_running", str(e), **{"Retry-After": "1"})
        except CrdtcoordError as e:
            return error(400, "bad_request", str(e))
        if state is None or key.startswith("$"):
            return error(404, "no_such_key", f"no key {key!r} on this node")
        return web.json_response(
            {"key": key, "type": type(state).__name__, "value": to_json(state.value())}
        )

    async def post_key(request: web.Request) -> web.Response:
        if (denied := client_auth(request)) is not None:
            return denied
        n = running()
        key = request.match_info["key"]
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return error(400, "bad_json", "the body must be a JSON object")
        except web.HTTPRequestEntityTooLarge:
            return error(413, "too_large", "request body too large")
        if not isinstance(body, dict):
            return error(400, "bad_json", "the body must be a JSON object")
        unknown = sorted(set(body) - _OP_FIELDS)
        if unknown:  # (a misspelled "consistency" must not become a local write)
            return error(
                400, "unknown_field", f"unknown field(s) {unknown}; known: {sorted(_OP_FIELDS)}"
            )
        try:
            op, factory = _op(n, key, body)
            level = Consistency.parse(body.get("consistency", "local"))
            op_id = body.get("op_id")
            if op_id is not None and not isinstance(op_id, str):
                raise InvalidArgument("op_id must be a string")
            timeout = body.get("timeout")
            if timeout is not None and (not finite_number(timeout) or timeout <= 0):
                raise InvalidArgument("timeout must be a positive number of seconds")
            applied = await n.apply(
                key, op, factory, consistency=level, op_id=op_id, timeout=timeout
            )
        except IncompatibleMerge as e:
            return error(409, "wrong_type", str(e))
        except NotRunning as e:
            return error(503, "not_running", str(e), **{"Retry-After": "1"})
        except ConsistencyTimeout as e:
            return error(
                504,
                "consistency_timeout",
                f"{e} (the op is applied here and keeps propagating; retry with the same"
                " op_id to wait again without applying it twice)",
            )
        except CrdtcoordError as e:
            return error(400, "bad_op", str(e))
        state = n.state(key)
        return web.json_response(
            {
                "key": key,
                "type": type(state).__name__ if state is not None else None,
                "value": to_json(state.value()) if state is not None else None,
                "op_id": body.get("op_id"),
                "consistency": str(body.get("consistency", "local")),
                # False: this op id was applied before; nothing changed now
                "applied": applied,
            }
        )

    async def send(resp: web.StreamResponse, data: bytes) -> None:
        await asyncio.wait_for(resp.write(data), 10.0)

    async def watch(request: web.Request) -> web.StreamResponse:
        if (denied := client_auth(request)) is not None:
            return denied
        n = running()
        if len(watchers) >= lim.max_watchers:
            return error(503, "too_many_watchers", "too many open watches", **{"Retry-After": "5"})
        prefix = request.query.get("prefix", "")
        since = request.query.get("since") or request.headers.get("Last-Event-ID") or None
        try:
            sub = n.subscribe(prefix, since)
        except CrdtcoordError as e:
            return error(400, "bad_cursor", str(e))
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        watchers[resp] = request
        from crdtcoord.runtime import Compacted

        try:
            await send(resp, f": watching {prefix!r} from {since or 'now'}\n\n".encode())
            it = sub.__aiter__()
            while not t._closing:
                try:
                    ch = await asyncio.wait_for(it.__anext__(), 15.0)
                except TimeoutError:
                    await send(resp, b": ping\n\n")  # (finds a gone client; keeps proxies open)
                    continue
                except Compacted as c:
                    data = {"reason": str(c), "cursor": c.cursor, "snapshot": to_json(c.snapshot)}
                    await send(
                        resp,
                        f"event: compacted\ndata: {json.dumps(data, default=str)}\n\n".encode(),
                    )
                    break
                data = {
                    "key": ch.key,
                    "value": to_json(ch.value),
                    "origin": ch.origin,
                    "cursor": ch.cursor,
                }
                await send(
                    resp, f"id: {ch.cursor}\ndata: {json.dumps(data, default=str)}\n\n".encode()
                )
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # (a client that stops reading for 10 s is dropped)
        finally:
            sub.close()
            watchers.pop(resp, None)
        return resp

    async def status(request: web.Request) -> web.Response:
        if (denied := client_auth(request)) is not None:
            return denied
        return web.json_response(to_json(running().status()))

    async def metrics(request: web.Request) -> web.Response:
        if (denied := client_auth(request)) is not None:
            return denied
        from crdtcoord_http.metrics import Metrics

        if t.metrics is None:
            t.metrics = Metrics(running(), t)
        body, ctype = t.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def lease_json(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return error(400, "bad_json", "the body must be a JSON object")
        if not isinstance(body, dict):
            return error(400, "bad_json", "the body must be a JSON object")
        unknown = sorted(set(body) - {"holder", "ttl", "mode"})
        if unknown:
            return error(400, "unknown_field", f"unknown field(s) {unknown}")
        if not isinstance(body.get("holder"), str) or not body["holder"]:
            return error(400, "bad_request", "a non-empty 'holder' is required")
        if request.match_info["name"].startswith("election/"):
            return error(400, "reserved", "lease names election/... belong to elections")
        return body

    async def lease_acquire(request: web.Request) -> web.Response:
        """POST /v1/leases/{name}/acquire {"holder", "ttl" (s), "mode"}: 200 with the grant,
        409 ``held`` with the current holder and token."""
        if (denied := client_auth(request)) is not None:
            return denied
        n = running()
        body = await lease_json(request)
        if isinstance(body, web.Response):
            return body
        ttl = body.get("ttl", 10)
        if not finite_number(ttl):
            return error(400, "bad_request", "ttl is a number of seconds")
        try:
            g = await n.lease(request.match_info["name"]).acquire(
                body["holder"], float(ttl), mode=body.get("mode")
            )
            n.persist_now()  # (the holder outlives this process: a crash must not forget it)
        except LeaseHeld as e:
            return web.json_response(
                {"error": "held", "detail": f"held by {e.holder}", "holder": e.holder,
                 "token": e.token},
                status=409,
            )  # fmt: skip
        except ConsensusUnavailable as e:
            return error(503, "consensus_unavailable", str(e), **{"Retry-After": "1"})
        except NotRunning as e:
            return error(503, "not_running", str(e), **{"Retry-After": "1"})
        except CrdtcoordError as e:
            return error(400, "bad_request", str(e))
        return web.json_response(g.as_dict())

    async def lease_release(request: web.Request) -> web.Response:
        if (denied := client_auth(request)) is not None:
            return denied
        n = running()
        body = await lease_json(request)
        if isinstance(body, web.Response):
            return body
        try:
            ok = await n.lease(request.match_info["name"]).release_holder(body["holder"])
        except ConsensusUnavailable as e:
            return error(503, "consensus_unavailable", str(e), **{"Retry-After": "1"})
        except NotRunning as e:
            return error(503, "not_running", str(e), **{"Retry-After": "1"})
        except CrdtcoordError as e:
            return error(400, "bad_request", str(e))
        return web.json_response({"released": ok})

    async def lease_show(request: web.Request) -> web.Response:
        if (denied := client_auth(request)) is not None:
            return denied
        try:
            h = running().lease(request.match_info["name"])
            out = await h.read()
        except ConsensusUnavailable as e:
            return error(503, "consensus_unavailable", str(e), **{"Retry-After": "1"})
        except NotRunning as e:
            return error(503, "not_running", str(e), **{"Retry-After": "1"})
        except CrdtcoordError as e:
            return error(400, "bad_request", str(e))
        rec = h.record()
        out["replica"] = None if rec is None else {
            "holder": rec.holder, "token": rec.token, "expiry_ms": rec.expiry.wall,
        }  # fmt: skip
        out["source"] = "consensus" if running().consensus is not None else "replica"
        if out["holder"] is None and rec is not None and rec.holder is not None:
            left = (rec.expiry.wall - running().hlc_now_ms()) / 1000
            if left > 0 and rec.token >= out["token"]:
                # consensus has no grant but the replicas do: an optimistic (or escalated)
                # lease, whose holder lives in the replicated record
                out.update(holder=rec.holder, token=rec.token, expires_in_s=left)
                out["source"] = "replica"
        out["expires_in_s"] = round(float(out["expires_in_s"]), 3)
        return web.json_response(out)

    # ---------------------------------------------------------------- other primitives

    leaderships: dict[tuple[str, str], Any] = {}
    heard: dict[tuple[str, str], float] = {}  # when each HTTP leader's client last checked in
    watchers_of_leaders: set[asyncio.Task[None]] = set()
    semaphores: dict[str, Any] = {}

    async def body_of(request: web.Request, fields: set[str]) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return error(400, "bad_json", "the body must be a JSON object")
        if not isinstance(body, dict):
            return error(400, "bad_json", "the body must be a JSON object")
        unknown = sorted(set(body) - fields)
        if unknown:
            return error(400, "unknown_field", f"unknown field(s) {unknown}")
        return body

    def number(body: Any, key: str, default: float, *, low: float = 0.0) -> float:
        """A finite number >= ``low`` from a JSON body or query (strings allowed in queries)."""
        v = body.get(key, default)
        if v in (None, ""):
            v = default
        if isinstance(v, str) and not isinstance(body, dict):
            try:
                v = float(v)
            except ValueError:
                raise InvalidArgument(f"{key!r} is a number") from None
        if not finite_number(v):
            raise InvalidArgument(f"{key!r} is a number")
        if v < low:
            raise InvalidArgument(f"{key!r} must be >= {low}")
        return float(v)

    def count(body: Any, key: str, default: int | None, *, low: int = 1) -> int | None:
        """A whole number >= ``low`` (or the default when absent)."""
        v = body.get(key, default)
        if v in (None, ""):
            return default
        if isinstance(v, str) and v.isascii() and v.isdigit() and not isinstance(body, dict):
            v = int(v)  # (a query string; JSON bodies must send numbers)
        if type(v) is not int or v < low or v > 2**62:
            raise InvalidArgument(f"{key!r} is a whole number >= {low}")
        return v

    def primitive(handler: Any) -> Any:
        """Client auth, then the handler; coordination errors as JSON."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            if (denied := client_auth(request)) is not None:
                return denied
            try:
                out: web.StreamResponse = await handler(request, running())
                return out
            except ConsensusUnavailable as e:
                return error(503, "consensus_unavailable", str(e), **{"Retry-After": "1"})
            except NotRunning as e:
                return error(503, "not_running", str(e), **{"Retry-After": "1"})
            except TimeoutError:
                return error(504, "timeout", "not done within the timeout")
            except CrdtcoordError as e:
                return error(400, "bad_request", str(e))

        return wrapped

    async def _expire_leadership(key: tuple[str, str], lead: Any, ttl: float) -> None:
        """An HTTP leader is kept by its client: a campaign call again within ``ttl`` (the
        CLI's ``--keep`` does it every ttl/3). Unheard for a whole ttl, it resigns: a client
        that died or left does not keep the lead through a server that lives on."""
        while not lead.lost:
            await asyncio.sleep(ttl / 4)
            seen = heard.get(key)
            if seen is None or id(leaderships.get(key)) != id(lead):  # (replaced or resigned)
                return
            if time.monotonic() - seen > ttl:
                leaderships.pop(key, None)
                heard.pop(key, None)
                await lead.resign()
                return

    @primitive
    async def election_campaign(request: web.Request, n: Node) -> web.Response:
        body = await body_of(request, {"candidate", "ttl", "timeout"})
        if isinstance(body, web.Response):
            return body
        name, cand = request.match_info["name"], body.get("candidate")
        if not isinstance(cand, str) or not cand:
            return error(400, "bad_request", "a non-empty 'candidate' is required")
        ttl = number(body, "ttl", 5.0, low=0.001)
        timeout = number(body, "timeout", 30.0)
        key = (name, cand)
        lead = leaderships.get(key)
        if lead is not None and not lead.lost:
            # the leader's client checks in: renewed now, through consensus, so the answer is
            # the truth (not this node's memory of it)
            try:
                await n.election(name).lease.renew(lead.grant)
                heard[key] = time.monotonic()
                return web.json_response({"leader": cand, "term": lead.term})
            except LeaseLost:
                leaderships.pop(key, None)
                heard.pop(key, None)
                await lead.resign()  # (stops its renewals; campaign again below)
        campaign = asyncio.ensure_future(n.election(name).campaign(cand, ttl))
        gone = False
        try:
            # a client that goes away stops its campaign (aiohttp does not cancel handlers)
            deadline = time.monotonic() + timeout
            while not campaign.done():
                tr = request.transport
                if tr is None or tr.is_closing():
                    gone = True
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait({campaign}, timeout=min(left, 0.2))
        finally:
            if not campaign.done():
                campaign.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await campaign
        if campaign.cancelled():
            return error(499, "client_gone", "the client left before the answer")
        won = campaign.result()
        tr = request.transport
        if gone or tr is None or tr.is_closing():
            await won.resign()  # (won as the client left: nobody would lead)
            return error(499, "client_gone", "the client left before the answer")
        lead = won
        leaderships[key] = lead
        heard[key] = time.monotonic()
        watch = asyncio.ensure_future(_expire_leadership(key, lead, ttl))
        watchers_of_leaders.add(watch)
        watch.add_done_callback(watchers_of_leaders.discard)
        return web.json_response({"leader": cand, "term": lead.term})

    @primitive
    async def election_resign(request: web.Request, n: Node) -> web.Response:
        body = await body_of(request, {"candidate"})
        if isinstance(body, web.Response):
            return body
        key = (request.match_info["name"], str(body.get("candidate")))
        lead = leaderships.pop(key, None)
        heard.pop(key, None)
        if lead is not None:
            await lead.resign()
        return web.json_response({"resigned": lead is not None})

    @primitive
    async def election_show(request: web.Request, n: Node) -> web.Response:
        e = n.election(request.match_info["name"])
        rec = e.lease.record()
        return web.json_response(
            {"leader": e.leader(), "term": rec.token if rec else 0, "weak_leader": e.weak_leader()}
        )

    def barrier_of(n: Node, name: str, participants: Any, src: Any) -> Any:
        if isinstance(participants, str):
            participants = [p for p in participants.split(",") if p]
        if participants is not None and not (
            isinstance(participants, list) and all(isinstance(p, str) for p in participants)
        ):
            raise InvalidArgument("participants is a list of names")
        return n.barrier(
            name,
            participants or None,
            n=count(src, "n", None),
            expires_ms=count(src, "expires_ms", None, low=0),
        )

    @primitive
    async def barrier_arrive(request: web.Request, n: Node) -> web.Response:
        body = await body_of(request, {"who", "participants", "n", "expires_ms"})
        if isinstance(body, web.Response):
            return body
        who = body.get("who")
        if not isinstance(who, str) or not who:
            return error(400, "bad_request", "a non-empty 'who' is required")
        b = barrier_of(n, request.match_info["name"], body.get("participants"), body)
        await b.arrive(who)
        return web.json_response({"arrived": sorted(b.arrived()), "open": b.is_open()})

    @primitive
    async def barrier_show(request: web.Request, n: Node) -> web.Response:
        q = request.query
        b = barrier_of(n, request.match_info["name"], q.get("participants"), q)
        if wait := number(q, "wait", 0.0):
            with contextlib.suppress(TimeoutError):
                await b.wait(wait)
        return web.json_response({"arrived": sorted(b.arrived()), "open": b.is_open()})

    async def semaphore_of(n: Node, name: str, permits: Any) -> Any:
        sem = semaphores.get(name)
        if sem is None:
            if type(permits) is not int or permits < 1:
                raise InvalidArgument("the first use of a semaphore gives 'permits' (>= 1)")
            sem = semaphores[name] = await n.semaphore(name, permits)
        elif permits is not None and permits != sem.permits:
            raise InvalidArgument(f"semaphore {name!r} has {sem.permits} permits, not {permits}")
        return sem

    @primitive
    async def semaphore_acquire(request: web.Request, n: Node) -> web.Response:
        body = await body_of(request, {"permits", "n", "timeout"})
        if isinstance(body, web.Response):
            return body
        k = count(body, "n", 1)
        assert k is not None
        timeout = number(body, "timeout", 5.0)  # (all checked before the first use creates it)
        sem = await semaphore_of(n, request.match_info["name"], body.get("permits"))
        try:
            await sem.acquire(k, timeout=timeout)
            n.persist_now()  # (the permit's holder outlives this process)
        except InsufficientRights as e:
            return web.json_response(
                {"error": "unavailable", "detail": str(e), "available": sem.available()},
                status=409,
            )
        return web.json_response({"acquired": k, "available": sem.available()})

    @primitive
    async def semaphore_release(request: web.Request, n: Node) -> web.Response:
        body = await body_of(request, {"permits", "n"})
        if isinstance(body, web.Response):
            return body
        k = count(body, "n", 1)
        assert k is not None
        name = request.match_info["name"]
        if name not in semaphores:  # (nothing acquired here: do not create it to refuse)
            raise InvalidArgument(f"semaphore {name!r}: releasing {k} but this node holds 0")
        sem = await semaphore_of(n, name, body.get("permits"))
        await sem.release(k)
        return web.json_response({"released": k, "available": sem.available()})

    @primitive
    async def ratelimit(request: web.Request, n: Node) -> web.Response:
        body = await body_of(request, {"limit", "window", "n"})
        if isinstance(body, web.Response):
            return body
        limit = count(body, "limit", None)
        if limit is None:
            return error(400, "bad_request", "'limit' (events per window) is required")
        rl = n.rate_limiter(
            request.match_info["name"], limit, number(body, "window", 1.0, low=0.001)
        )
        k = count(body, "n", 1)
        assert k is not None
        if k > limit:
            return error(400, "bad_request", f"n={k} exceeds the limit {limit}: never admitted")
        ok = rl.try_acquire(k)
        return web.json_response(
            {"admitted": ok, "used": rl.used(), "retry_after": 0.0 if ok else rl.retry_after()}
        )

    # ---------------------------------------------------------------- Yjs documents

    rooms: dict[str, tuple[Room, Callable[[], None]]] = {}
    sockets: set[web.WebSocketResponse] = set()

    def room_for(n: Node, name: str) -> Room:
        got = rooms.get(name)
        if got is None:
            room = Room(n.document(name))
            got = rooms[name] = (room, n.watch_key(name, room.committed))
            t.counters.yjs_rooms = len(rooms)
        return got[0]

    def room_closed(name: str, room: Room) -> None:
        got = rooms.get(name)
        if got is not None and got[0] is room and not room.sessions:
            del rooms[name]
            got[1]()  # (stops watching the key)
            t.counters.yjs_rooms = len(rooms)

    async def yjs(request: web.Request) -> web.StreamResponse:
        """WebSocket ``/v1/yjs/{name}``: y-protocols for stock Yjs clients (``y-websocket``).

        Refusals happen after the handshake, as close codes a browser can see: 4401 no or bad
        token, 4403 a page of a foreign origin in protected mode, 4400 a frame that breaks the
        protocol or an update that is refused (nothing changed), 4409 the key holds another
        type, 4413 a frame over the limit (``y-websocket`` retries every code but 44xx), 1013
        too many connections or a client too slow to read."""
        denied = client_auth(request)
        # (pings every 30 s: a connection that stopped answering is dropped)
        ws = _YjsSocket(max_msg_size=lim.max_yjs_frame, autoping=True, heartbeat=30.0)
        await ws.prepare(request)
        name = request.match_info["name"]
        if denied is not None:
            if denied.status == 403:
                await ws.close(code=4403, message=b"forbidden: cross-origin or not loopback")
                return ws
            t.counters.refuse("yjs_unauthorized")
            await ws.close(code=4401, message=b"unauthorized: pass ?token=... (params: {token})")
            return ws
        n = running()
        problem = None
        try:
            check_key(name)
        except CrdtcoordError as e:
            problem = (4400, f"bad document name: {e}")
        else:
            kind = n.engine.kind(name)
            if kind is not None and kind is not Document:
                problem = (4409, f"key {name!r} holds {_a(kind.__name__)}, not a Document")
        if problem is None and len(sockets) >= lim.max_yjs_sessions:
            problem = (1013, "too many Yjs connections; try again later")
        if problem is None and t._closing:
            problem = (1012, "the node is shutting down")
        if problem is not None:
            await ws.close(code=problem[0], message=problem[1][:120].encode())
            return ws
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(lim.yjs_send_queue)
        slow = False
        kicks: list[asyncio.Future[None]] = []

        def push(frame: bytes) -> None:
            nonlocal slow
            if slow:
                return
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                slow = True  # the client reads slower than the document changes: drop it
                t.counters.refuse("yjs_too_slow")
                kicks.append(asyncio.ensure_future(kick()))

        async def kick() -> None:
            """Close a client that stopped reading (its writer may be stuck in a send: if the
            close does not get through within a second, the connection is cut)."""
            try:
                await asyncio.wait_for(
                    ws.close(code=1013, message=b"too slow: reconnect and resync"), 1.0
                )
            except (TimeoutError, Exception):
                if request.transport is not None:
                    request.transport.abort()

        async def writer() -> None:
            while True:
                frame = await queue.get()
                if frame is None:
                    return
                await ws.send_bytes(frame)
                t.counters.yjs_frames_out += 1
                t.counters.yjs_bytes_out += len(frame)

        sockets.add(ws)
        t.counters.yjs_connections = len(sockets)
        room = room_for(n, name)
        session = None
        wtask = asyncio.ensure_future(writer())
        try:
            session = room.open(push)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    t.counters.yjs_frames_in += 1
                    t.counters.yjs_bytes_in += len(msg.data)
                    try:
                        session.receive(msg.data)
                    except ProtocolViolation as e:
                        t.counters.refuse("yjs_protocol")
                        await ws.close(code=4400, message=str(e)[:120].encode())
                        break
                    except NotRunning:
                        await ws.close(code=1012, message=b"the node is shutting down")
                        break
                    if len(msg.data) > 256 * 1024:
                        await asyncio.sleep(0)  # (after a large update, let others run)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    t.counters.refuse("yjs_protocol")
                    await ws.close(code=4400, message=b"y-protocols frames are binary")
                    break
                else:
                    break
        finally:
            sockets.discard(ws)
            t.counters.yjs_connections = len(sockets)
            if session is not None:
                session.close()
            room_closed(name, room)
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(wtask, 1.0)
            wtask.cancel()
        return ws

    async def on_shutdown(app: web.Application) -> None:
        for ws in list(sockets):  # (open sockets would delay shutdown)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"node shutting down"), 0.5)
        for resp, req in list(watchers.items()):  # (open streams would delay shutdown)
            with contextlib.suppress(Exception):
                # a client that stopped reading has a full socket: do not wait for it
                await asyncio.wait_for(resp.write_eof(), 0.5)
            if req.transport is not None:
                req.transport.close()

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/v1/health", health)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/keys", keys)
    app.router.add_get("/v1/keys/{key:.+}", get_key)
    app.router.add_post("/v1/keys/{key:.+}", post_key)
    app.router.add_get("/v1/watch", watch, allow_head=False)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/leases/{name}/acquire", lease_acquire)
    app.router.add_post("/v1/leases/{name}/release", lease_release)
    app.router.add_get("/v1/leases/{name}", lease_show)
    app.router.add_post("/v1/elections/{name}/campaign", election_campaign)
    app.router.add_post("/v1/elections/{name}/resign", election_resign)
    app.router.add_get("/v1/elections/{name}", election_show)
    app.router.add_post("/v1/barriers/{name}/arrive", barrier_arrive)
    app.router.add_get("/v1/barriers/{name}", barrier_show)
    app.router.add_post("/v1/semaphores/{name}/acquire", semaphore_acquire)
    app.router.add_post("/v1/semaphores/{name}/release", semaphore_release)
    app.router.add_post("/v1/ratelimits/{name}", ratelimit)
    app.router.add_get("/v1/yjs/{name:.+}", yjs)
    return app


_OP_FIELDS = frozenset(
    {"op", "n", "element", "value", "consistency", "op_id", "timeout"}
    | {"root", "index", "text", "length", "key", "update"}  # (document ops)
)
#: Document ops of the JSON API: name -> the body fields they take.
_DOC_OPS = {
    "insert_text": ("root", "index", "text"),
    "delete_text": ("root", "index", "length"),
    "doc_set": ("root", "key", "value"),
    "doc_delete": ("root", "key"),
    "yjs_update": ("update",),
}


def _a(name: str) -> str:
    return ("an " if name[0] in "AEIOU" else "a ") + name


def _pending_writes(node: NodePort) -> int:
    f = getattr(node, "pending_writes", None)
    return int(f()) if callable(f) else 0


def _doc_op(name: str, body: dict[str, Any]) -> Any:
    """A document op from a JSON body (``yjs_update`` takes a base64 v1 update)."""
    missing = [f for f in _DOC_OPS[name] if f not in body]
    if missing:
        raise InvalidArgument(f"{name} needs {', '.join(repr(f) for f in missing)}")
    for f in ("index", "length"):
        if f in _DOC_OPS[name] and (type(body[f]) is not int or body[f] < 0):
            raise InvalidArgument(f"{f} must be a non-negative integer")
    if name == "insert_text":
        return Document.InsertText(body["root"], body["index"], body["text"])
    if name == "delete_text":
        return Document.DeleteText(body["root"], body["index"], body["length"])
    if name == "doc_set":
        return Document.SetKey(body["root"], body["key"], body["value"])
    if name == "doc_delete":
        return Document.DeleteKey(body["root"], body["key"])
    raw = body["update"]
    if not isinstance(raw, str):
        raise InvalidArgument("update must be a base64 string (a Yjs v1 update)")
    try:
        update = base64.b64decode(raw, validate=True)
    except ValueError:
        raise InvalidArgument("update is not valid base64") from None
    return Document.Apply(update)


def _op(n: Node, key: str, body: dict[str, Any]) -> tuple[Any, Any]:
    """The op and factory for a client API request (see :func:`build_app`)."""
    name = body.get("op")
    kind = n.engine.kind(key)
    if key.startswith("$"):
        raise InvalidArgument("keys starting with '$' are reserved")
    if name in _DOC_OPS:
        if kind not in (None, Document):
            raise IncompatibleMerge(
                f"key {key!r} is {_a(kind.__name__)}; {name} works on a Document"
            )
        return _doc_op(str(name), body), Document
    if name in ("inc", "dec"):
        amount = body.get("n", 1)
        if type(amount) is not int or amount < 0:
            raise InvalidArgument("n must be a non-negative integer")
        if kind is GCounter and name == "inc":
            return GCounter.Increment(amount), GCounter
        if kind not in (None, PNCounter):
            raise IncompatibleMerge(
                f"key {key!r} is {_a(kind.__name__)}; {name} works on a PNCounter (or inc on a"
                " GCounter)"
            )
        op = PNCounter.Increment(amount) if name == "inc" else PNCounter.Decrement(amount)
        return op, PNCounter
    if name in ("add", "remove"):
        if "element" not in body:
            raise InvalidArgument(f"{name} needs an 'element'")
        element = body["element"]
        if kind not in (None, ORSet):
            raise IncompatibleMerge(f"key {key!r} is {_a(kind.__name__)}; {name} works on an ORSet")
        return (ORSet.Add(element) if name == "add" else ORSet.Remove(element)), ORSet
    if name == "set":
        if "value" not in body:
            raise InvalidArgument("set needs a 'value'")
        if kind not in (None, LWWRegister):
            raise IncompatibleMerge(
                f"key {key!r} is {_a(kind.__name__)}; set works on an LWWRegister"
            )
        return LWWRegister.Assign(body["value"]), LWWRegister
    raise InvalidArgument(
        f"unknown op {name!r}: use inc, dec, add, remove or set (documents: {', '.join(_DOC_OPS)})"
    )
