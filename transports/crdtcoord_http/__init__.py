"""crdtcoord_http: the aiohttp transport of crdtcoord.

:class:`HttpTransport` serves the replication protocol on ``POST /v1/messages`` (msgpack bodies,
HMAC-signed with the cluster secret), a JSON client API with bearer tokens, server-sent change
feeds, ``/v1/status`` and Prometheus ``/metrics``; :class:`Client` is a small synchronous client
of that API (the CLI uses it). See ``docs/operations.md``.
"""

from crdtcoord_http.auth import AuthError, ConfigError, Signer, TokenSet, load_secret
from crdtcoord_http.client import Client, ClientError
from crdtcoord_http.transport import HttpLimits, HttpTransport, is_loopback

__all__ = [
    "AuthError",
    "Client",
    "ClientError",
    "ConfigError",
    "HttpLimits",
    "HttpTransport",
    "Signer",
    "TokenSet",
    "is_loopback",
    "load_secret",
]
