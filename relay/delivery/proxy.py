"""The egress proxy of the API requests: ``AHASEND_API_PROXY``, else the environment's.

The relay talks to one base URL (``AHASEND_API_BASE_URL``; tenants share it), so the proxy
is chosen once, at start, by ``choose_proxy``:

1. ``AHASEND_API_PROXY`` set to a URL: that proxy, whatever the environment says
   (``NO_PROXY`` included). Set to the empty string or ``none``: no proxy at all, the
   environment ignored (as curl's ``--proxy ""``).
2. Otherwise the environment, as curl and httpx read it: ``https_proxy`` for an https base
   URL, ``http_proxy`` for an http one, else ``all_proxy``; each lowercase name wins over its
   uppercase one; an empty value counts as unset. ``no_proxy``/``NO_PROXY`` names hosts
   reached directly: ``*`` (every host), a host name (itself and its subdomains, with or
   without a leading ``.`` or ``*.``), an IP address or CIDR network, each optionally with
   ``:port``.

A proxy URL is ``http://`` or ``https://`` (both transports speak these; a URL without a
scheme is ``http://``, as curl and httpx read it), optionally with ``user:password@``
(percent-encoded), which becomes a ``Proxy-Authorization: Basic`` header. An http base URL
is forwarded by absolute URI (``POST http://host/...``), an https one tunnelled (``CONNECT``),
with either transport. ``ProxyURL`` never shows its password: ``masked``, ``str`` and
``repr`` replace it with ``****``.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, unquote, urlsplit

import httpx

__all__ = [
    "DIRECT",
    "MASK",
    "ProxyURL",
    "bypasses_proxy",
    "choose_proxy",
    "describe_proxy",
    "mask_proxy_text",
    "parse_proxy_url",
]

MASK = "****"
DIRECT = frozenset({"", "none"})
"""``AHASEND_API_PROXY`` values meaning "no proxy, whatever the environment says"."""
_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_USERINFO = re.compile(r"^(?P<user>[^:/@]*):.*@", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """One proxy: where it is, its credentials (never shown), and the variable that named it."""

    scheme: str
    host: str
    port: int | None
    source: str
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def masked(self) -> str:
        """The URL with the password replaced by ``****`` (the user name is kept)."""
        return self._url(MASK if self.password else "")

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"ProxyURL({self.masked!r}, source={self.source!r})"

    def to_httpx(self, trust: ssl.SSLContext | None = None) -> httpx.Proxy:
        """The ``httpx.Proxy`` both transports take; credentials as a ``Proxy-Authorization``
        header (both send ``proxy.headers``; aiohttp deprecates its ``BasicAuth``). ``trust``
        verifies an https proxy's certificate with httpx's transport (aiohttp's uses its
        connector's context, the API's, for the proxy too)."""
        headers = {}
        if self.username or self.password:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Proxy-Authorization"] = f"Basic {token}"
        context = trust if self.scheme == "https" else None  # httpcore: none for http://
        return httpx.Proxy(self._url(None), headers=headers, ssl_context=context)

    def _url(self, password: str | None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        userinfo = ""
        if password is not None and (self.username or self.password):
            userinfo = self.username + (f":{password}" if password else "") + "@"
        return f"{self.scheme}://{userinfo}{host}{port}"


def parse_proxy_url(value: str, source: str) -> ProxyURL:
    """``value`` as a proxy URL; ValueError naming ``source`` (never the password) if not one."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    problem = _url_problem(parts.scheme.lower(), parts.hostname, parts.path)
    try:
        port = parts.port
    except ValueError:
        problem = problem or "its port is not a number from 0 to 65535"
    if problem:
        raise ValueError(f"{source}: {mask_proxy_text(text)} is not a usable proxy URL: {problem}")
    assert parts.hostname is not None
    return ProxyURL(
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port,
        source=source,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )


def mask_proxy_text(value: str) -> str:
    """A proxy setting's value as it may be shown: whatever lies between the user name's
    ``:`` and the last ``@`` replaced by ``****`` (with or without a scheme, and even when
    the password holds characters a URL cannot, such as ``/`` or ``@``)."""
    text = value.strip()
    scheme = _SCHEME.match(text)
    head, rest = (scheme.group(), text[scheme.end() :]) if scheme else ("", text)
    return head + _USERINFO.sub(rf"\g<user>:{MASK}@", rest)


def describe_proxy(proxy: ProxyURL | None) -> str:
    """``http://user:****@proxy:3128 (from HTTPS_PROXY)``, or ``none (direct)``."""
    return "none (direct)" if proxy is None else f"{proxy.masked} (from {proxy.source})"


def _url_problem(scheme: str, host: str | None, path: str) -> str:
    if scheme not in _SCHEMES:
        return f"the scheme must be http or https, not {scheme!r}"
    if not host:
        return "it names no host"
    if "@" in path:
        return "percent-encode / ? # @ in the user name and password (%2F %3F %23 %40)"
    if path not in ("", "/"):
        return "a proxy URL has no path"
    return ""


def choose_proxy(
    base_url: str, explicit: str | None, environ: Mapping[str, str]
) -> ProxyURL | None:
    """The proxy for requests to ``base_url``, None for a direct connection.

    ``explicit`` is ``AHASEND_API_PROXY`` (None when unset); ``environ`` holds the proxy
    variables by their exact names (``https_proxy``, ``HTTPS_PROXY``, ...). See the module
    docstring for the rules. ValueError names the variable of an unusable URL.
    """
    if explicit is not None:
        if explicit.strip().lower() in DIRECT:
            return None
        return parse_proxy_url(explicit, "AHASEND_API_PROXY")
    target = urlsplit(base_url)
    proxy = _environment_proxy(target.scheme.lower(), environ)
    no_proxy = _variable(environ, "no_proxy")[1]
    if proxy is None or bypasses_proxy(target.hostname or "", _port(target), no_proxy):
        return None
    return proxy


def _environment_proxy(scheme: str, environ: Mapping[str, str]) -> ProxyURL | None:
    """``{scheme}_proxy``, else ``all_proxy`` (each lowercase first), or None."""
    for name in (f"{scheme}_proxy", "all_proxy"):
        source, value = _variable(environ, name)
        if value:
            try:
                return parse_proxy_url(value, source)
            except ValueError as exc:
                hint = "AHASEND_API_PROXY, a URL or none, overrides it"
                raise ValueError(f"{exc} ({hint})") from None
    return None


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """(name it was found under, value): the lowercase name first, then the uppercase one."""
    for spelled in (name, name.upper()):
        value = environ.get(spelled, "").strip()
        if value:
            return spelled, value
    return name, ""


def _port(target: SplitResult) -> int:
    return target.port or (443 if target.scheme.lower() == "https" else 80)


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """True when ``no_proxy`` (a ``NO_PROXY`` value) says ``host:port`` is reached directly."""
    host = host.lower().strip("[]").rstrip(".")
    for entry in (item.strip().lower() for item in no_proxy.split(",")):
        if entry and _matches(host, port, entry):
            return True
    return False


def _matches(host: str, port: int, entry: str) -> bool:
    if entry == "*":
        return True
    name, wanted_port = _split_port(entry)
    if wanted_port is not None and wanted_port != port:
        return False
    try:
        network = ipaddress.ip_network(name, strict=False)
    except ValueError:
        name = name.removeprefix("*").lstrip(".").rstrip(".")
        return bool(name) and (host == name or host.endswith(f".{name}"))
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``v6`` or ``host`` as (host, port or None)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None
