"""Joining a Ray cluster: 'local' (start one here), 'auto' (the one running here) or host:port.

Two things Ray 2.60 does on its own make a cluster named by its address hard to reach, and both are
handled here rather than left to the user:

- Token authentication. Ray sends its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)
  when it finds a cluster itself ('auto'), but never for an explicit address, so a cluster started with
  `ray start --head` (token mode once a token exists) refused batchgen. Token mode is turned on here as
  Ray does it for 'auto': when a token exists and RAY_AUTH_MODE is not set. A client in token mode still
  reaches a cluster without authentication.
- Loopback addresses. Ray rewrites 127.0.0.1/localhost to this machine's network address before it
  connects, so a cluster whose nodes run on 127.0.0.1 (`ray start --head --node-ip-address=127.0.0.1`,
  or tests' simulated nodes) is never found, and plain Ray use reaches out on the network interface. For a
  loopback address the rewrite is switched off, and 'local' starts its cluster on 127.0.0.1 only. A
  cluster started on the machine's network address is reached by that address or by 'auto'.

Failures are told apart: nothing listening at the address (found by a TCP connect, at once, instead of
Ray's retries of 41 s each) and a refused token say different things, each with what to do.
"""

from __future__ import annotations

import os
import socket

from batchgen.errors import BatchgenError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Substrings of Ray's GCS error when it refused the token (gcs_client: "Unauthenticated: ... InvalidAuthToken").
_AUTH_MARKERS = ("Unauthenticated", "InvalidAuthToken")
# Ray retries reaching a cluster this many times (1 s each when the token is refused); its default of 20
# attempts of up to 41 s is for a cluster still starting, which a TCP connect has already ruled out.
_GCS_WAIT_ATTEMPTS = "5"


class RayAuthenticationFailed(BatchgenError):
    """The cluster is there but refused this process's token (or it had none)."""


class NoRayCluster(BatchgenError):
    """Nothing answers at the address given."""


def split_address(address: str) -> tuple[str, int]:
    """'host:port' (or '[::1]:port') -> (host, port); a BatchgenError names the address otherwise."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise BatchgenError(f"--ray '{address}': give the cluster's address as HOST:PORT (the head's GCS port, "
                            "6379 unless `ray start --head --port` said otherwise), 'auto' or 'local'.")
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK


def check_listening(host: str, port: int, address: str, timeout: float = 2.0) -> None:
    """Refuse at once when nothing listens there; ray.init would retry for minutes."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise NoRayCluster(
            f"No Ray cluster at '{address}' ({type(exc).__name__}: {exc}). Start one with `ray start --head "
            f"--port={port}` (add --node-ip-address=127.0.0.1 for one on this machine only), give the address "
            "that `ray start` printed, or use --ray local."
        ) from exc


def load_ray():
    try:
        import ray
    except ImportError:
        raise BatchgenError("--ray needs Ray: pip install 'batchgen[ray]'") from None
    return ray


def _keep_loopback() -> None:
    # Ray's services.get_node_ip_address() reads this flag at call time; off, it answers 127.0.0.1
    # instead of the address of the interface that routes outwards (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0).
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False


def _enable_token_if_needed(address: str) -> None:
    """Token mode when the cluster asks for it and a token exists (RAY_AUTH_MODE, when set, decides).

    Not whenever a token exists, as Ray does for 'auto': a driver in token mode joins a cluster without
    authentication, but the actors it creates there die before they start ("all references to the actor
    were removed"). So ask the cluster first, with a connection that carries no token."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
        from ray._raylet import GcsClient
    except ImportError:  # a Ray without token authentication: nothing to send
        return
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        GcsClient(address=address)
        return
    except Exception as exc:
        if not is_auth_failure(exc):
            return  # not ours to judge: ray.init reports it
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def is_auth_failure(exc: BaseException) -> bool:
    """Whether ray.init failed because the cluster refused (or never got) a token."""
    import ray

    if isinstance(exc, getattr(ray.exceptions, "AuthenticationError", ())):
        return True
    text = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}"
    return any(marker in text for marker in _AUTH_MARKERS)


def auth_failed_message(address: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"The Ray cluster at '{address}' refused this process's authentication token ({first}). Ray clusters "
        "use token authentication: run `ray get-auth-token` on the head node and give it to batchgen as "
        "RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>, or put it in ~/.ray/auth_token)."
    )


def connect(address: str, init: dict) -> None:
    """ray.init for `address` with the keyword arguments `init`; BatchgenError when that cluster cannot be used."""
    ray = load_ray()
    if address == "local":
        _keep_loopback()
        ray.init(_node_ip_address="127.0.0.1", **init)
        return
    if address != "auto":
        host, port = split_address(address)
        check_listening(host, port, address)
        if is_loopback(host):
            _keep_loopback()
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", _GCS_WAIT_ATTEMPTS)
        _enable_token_if_needed(address)  # 'auto' has Ray's own: token mode when a token exists
    try:
        ray.init(address=address, **init)
    except Exception as exc:
        if is_auth_failure(exc):
            raise RayAuthenticationFailed(auth_failed_message(address, exc)) from exc
        if isinstance(exc, (ConnectionError, RuntimeError)):
            raise NoRayCluster(
                f"Could not join the Ray cluster at '{address}': {exc}. Check that it is a Ray head's GCS address "
                "(`ray status --address ADDRESS`), or start one with `ray start --head`."
            ) from exc
        raise
