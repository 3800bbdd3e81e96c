"""Which network addresses a URL from data may reach, decided when the socket connects.

URLs in server answers (attachment URLs, Binary references, file URLs, status URLs, ``next`` links,
redirects) may name any host. A hostile or compromised server can point them at the client's own network:
a loopback admin port, a database on a private address, the cloud metadata service at 169.254.169.254.
Checking the URL's text is not enough (``http://2852039166/`` is 169.254.169.254, a DNS name can resolve
to anything and change between the check and the request), so the check happens on the resolved
addresses, in the connection itself, and the socket connects to exactly the address that was checked
(the name is never resolved a second time, so DNS rebinding cannot slip past it):

- a public address is always allowed;
- an internal one (loopback, private, shared/CGNAT, link-local, multicast, unspecified, reserved, and the
  same hidden in IPv4-mapped, 6to4, Teredo or NAT64 IPv6 forms) only when the host and port are a trusted
  endpoint (the FHIR server's own origin, or an origin the user lists) or the address lies in a network the
  user lists (the connection's ``allowed_internal_hosts`` extra);
- every redirect hop opens its own connection and is checked again.

A refusal raises :class:`BlockedAddressError`, which is deliberately not an ``OSError``: urllib3 and
requests let it through unwrapped, so it is never mistaken for a failed connection and retried.

Requests made through a proxy from the environment connect to the proxy, not to the target: their
target's name is resolved and checked before the request (no pinning is possible there; the proxy's own
egress rules decide the rest). No Airflow import.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from airflow_provider_smart.transport.urls import UnsafeUrlError, check_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The connection extra that opts internal endpoints in.
ALLOWED_INTERNAL_EXTRA = "allowed_internal_hosts"

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


class BlockedAddressError(Exception):
    """A URL resolved to an internal address the connection does not allow (never retried)."""


def internal_kind(address: IPAddress) -> str | None:
    """Why ``address`` is internal (``"loopback"``, ``"private"``, ...), or None for a public address.

    IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) are judged by that address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return internal_kind(embedded)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (where cloud metadata services live)"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address in _SHARED:
        return "shared (carrier-grade NAT)"
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Where connections may go: public addresses, trusted endpoints, and listed internal networks.

    :param trusted_endpoints: ``(host, port)`` pairs reached at any address (the FHIR server's origin and
        the origins the user lists); hosts lower-case, IPv6 literals in brackets as urllib3 writes them.
    :param networks: internal networks the user allows (``10.1.0.0/16``, ``127.0.0.1/32``).
    """

    trusted_endpoints: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def for_server(cls, base_url: str, allowed_internal: Iterable[str] = ()) -> AddressPolicy:
        """The policy of one connection: its FHIR base URL's origin plus the ``allowed_internal_hosts`` entries."""
        endpoints = {_endpoint(base_url)}
        networks: list[IPNetwork] = []
        for entry in allowed_internal:
            kind, value = parse_allowed_entry(entry)
            if kind == "origin":
                endpoints.add(_endpoint(value))
            else:
                networks.append(ipaddress.ip_network(value, strict=False))
        return cls(frozenset(endpoints), tuple(networks))

    def trusts(self, host: str, port: int) -> bool:
        return (_bracketed(host.lower().rstrip(".")), port) in self.trusted_endpoints

    def refusal(self, host: str, port: int, address: IPAddress) -> str | None:
        """Why a connection to ``host:port`` at ``address`` is refused, or None when it is allowed."""
        if self.trusts(host, port):
            return None
        kind = internal_kind(address)
        if kind is None or any(address in network for network in self.networks):
            return None
        return kind

    def addresses(self, host: str, port: int) -> list[str]:
        """The resolved addresses of ``host`` this policy allows, in resolver order.

        :raises BlockedAddressError: when every address is refused (the message names the first).
        :raises socket.gaierror: when the name does not resolve.
        """
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        return self.allowed_of(host, port, [str(info[4][0]) for info in infos])

    def allowed_of(self, host: str, port: int, resolved: Iterable[str]) -> list[str]:
        """The allowed ones among ``resolved`` (addresses of ``host``), or :class:`BlockedAddressError`."""
        allowed: list[str] = []
        refused: list[tuple[str, str]] = []
        for text in dict.fromkeys(resolved):
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = self.refusal(host, port, address)
            if reason is None:
                allowed.append(text)
            else:
                refused.append((text, reason))
        if not allowed:
            shown, reason = refused[0] if refused else ("nothing", "unresolvable")
            raise BlockedAddressError(
                f"refused: a {reason} address ({shown}); URLs from data reach internal hosts only when the "
                f"connection extra {ALLOWED_INTERNAL_EXTRA} lists them"
            )
        return allowed

    def check_url(self, url: str) -> None:
        """Resolve ``url``'s host and refuse it like a connection would (for requests sent via a proxy)."""
        _, host, port = check_url(url)
        self.addresses(host, port)


def parse_allowed_entry(entry: str) -> tuple[str, str]:
    """One ``allowed_internal_hosts`` entry as ``("origin", url)`` or ``("network", cidr)``.

    :raises ValueError: naming the entry and the accepted forms.
    """
    text = str(entry).strip()
    if "://" in text:
        try:
            scheme, host, port = check_url(text)
        except UnsafeUrlError as exc:
            raise ValueError(f"{ALLOWED_INTERNAL_EXTRA}: {exc}") from None
        return "origin", f"{scheme}://{host}:{port}"
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{ALLOWED_INTERNAL_EXTRA}: {text[:100]!r} is neither an origin (https://storage.internal:9000) "
            "nor an address or network (10.1.0.0/16, 127.0.0.1)"
        ) from None
    return "network", text


def _endpoint(url: str) -> tuple[str, int]:
    _, host, port = check_url(url)
    return host, port


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --- requests / urllib3: the check inside the connection ---------------------------------------


class _GuardedConnectionMixin:
    """Resolves the host once, checks every address, and connects to an allowed one by its address."""

    address_policy: ClassVar[AddressPolicy]
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            addresses = self.address_policy.addresses(self.host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        error: OSError | None = None
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
            except OSError as exc:
                error = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")  # type: ignore[arg-type]


def _pool_classes(policy: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections check addresses under ``policy`` (one set per client)."""
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"address_policy": policy})
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), {"address_policy": policy})
    http_pool = type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
    return {"http": http_pool, "https": https_pool}


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection obeys an :class:`AddressPolicy` (mount it for http and https)."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        self.address_policy = policy
        self._pools = _pool_classes(policy)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        proxies: Mapping[str, str] | None = kwargs.get("proxies")
        if proxies and select_proxy(request.url, proxies):
            self.address_policy.check_url(request.url)
        return super().send(request, *args, **kwargs)


def guard_session(session: Any, policy: AddressPolicy) -> None:
    """Make every http(s) connection of a requests session obey ``policy``."""
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


# --- httpx / httpcore (the trigger): the same check in the network backend ----------------------


class GuardedAsyncBackend:
    """An httpcore network backend that resolves, checks and connects by address (see the module text).

    The TLS handshake still names the host (httpcore passes the origin's host as SNI and for the
    certificate check), so connecting by address changes nothing else.
    """

    def __init__(self, inner: Any, policy: AddressPolicy) -> None:
        self._inner = inner
        self.address_policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        import asyncio

        import httpcore

        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        addresses = self.address_policy.allowed_of(host, port, [str(info[4][0]) for info in infos])
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise httpcore.ConnectError(str(error))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
        raise BlockedAddressError("unix sockets are never connected for URLs from data")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guard_async_client(client: Any, policy: AddressPolicy) -> Any:
    """Make the direct connections of an ``httpx.AsyncClient`` obey ``policy``; returns the client.

    Only the client's own transport is guarded: requests that the environment's proxy settings send to a
    proxy connect to the proxy, and their caller judges the target first (see the module text).
    """
    # httpx has no public way to pass a network backend; its default transport's pool keeps the one it uses.
    pool: Any = client._transport._pool
    pool._network_backend = GuardedAsyncBackend(pool._network_backend, policy)
    return client
