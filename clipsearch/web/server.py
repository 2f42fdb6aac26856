"""Running the app with uvicorn on a socket bound beforehand, so that the address (even a port
chosen by the system with ``--port 0``) is known, and printed, before the first request."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from clipsearch.errors import ClipsearchError
from clipsearch.web.guards import LOOPBACK_HOSTS


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (``localhost``, 127.x.x.x, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> tuple[str, ...] | None:
    """The ``Host`` header names to answer when listening on ``host``: this machine's names
    for a loopback address (keeping out other sites through DNS rebinding), any otherwise."""
    return LOOPBACK_HOSTS if is_loopback(host) else None


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), ready for uvicorn.

    Raises:
        ClipsearchError: the address cannot be resolved or the port is taken.
    """
    host = host.strip("[]")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ClipsearchError(f"cannot listen on {host}: {e.strerror}; check --host") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ClipsearchError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port "
            "(0 lets the system choose one)"
        ) from e
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    """The http:// address a browser on this machine should open for a bound socket."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def network_urls(sock: socket.socket) -> list[str]:
    """For a socket bound to every address (0.0.0.0, ::), the http:// addresses other machines
    can use: the address of the route out, and those the host name resolves to, less loopback
    (best effort: none without a network). A socket bound to one address: that one, unless
    it is loopback."""
    host, port = sock.getsockname()[:2]
    if host not in ("0.0.0.0", "::"):
        if is_loopback(host):
            return []
        return [f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"]
    family = socket.AF_INET if host == "0.0.0.0" else socket.AF_INET6
    ips = [_route_address(family)]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), port, family, socket.SOCK_STREAM)
        ips += [str(addr[0]) for *_, addr in infos]
    except OSError:
        pass
    out = []
    for ip in ips:
        if ip is None:
            continue
        if is_loopback(ip) or ip.startswith("fe80:"):
            continue
        url = f"http://[{ip}]:{port}/" if ":" in ip else f"http://{ip}:{port}/"
        if url not in out:
            out.append(url)
    return out


def _route_address(family: socket.AddressFamily) -> str | None:
    """The address this machine sends from towards the rest of the network (a UDP socket's
    connect picks the route and sends nothing); None without a route."""
    probe = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"  # documentation nets
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def run(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl+C (then return) or SIGTERM."""
    try:
        import uvicorn

        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # early, or after uvicorn shut down cleanly and raised the Ctrl+C again for us
