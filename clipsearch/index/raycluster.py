"""The Ray cluster as the executor sees it: connecting within a bound, and what fits on it.

Ray's own connect retries an unreachable address for minutes, printing a warning every few
seconds, and an actor that asks for more than any node has waits forever. Here every wait has
a bound: the address is probed before Ray is asked to connect, ``ray.init`` runs in a thread
the driver stops waiting for after ``RayOptions.timeout`` seconds (Ray's warnings silenced
meanwhile), and the actors asked for are checked against each live node's CPUs and GPUs
before any is created.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clipsearch.errors import ClipsearchError, ClusterUnavailableError

log = logging.getLogger(__name__)

RAY_MISSING = "--executor ray needs Ray: pip install 'clipsearch[ray]'"
CLIENT_MISSING = (
    "{address}: ray:// addresses need Ray Client (grpcio): pip install 'clipsearch[ray]' "
    "installs it, or connect with --ray-address HOST:6379 on a node of the cluster"
)
LOCAL_START_MIN_S = 120.0  # starting Ray here spawns several processes: more than a connect


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run the Ray actors.

    Args:
        address: a running cluster (``HOST:6379``, ``auto`` or ``ray://HOST:10001``); None
            starts a local Ray instance on this machine for the duration of the run.
        actors: how many encoder actors; default: as many as the cluster's nodes have room
            for. More than fit are clamped to what fits, with a warning.
        num_cpus: CPUs reserved per actor.
        num_gpus: GPUs reserved per actor (fractions share a GPU).
        shard_size: files per task; also the size of each committed transaction.
        timeout: seconds to wait for the cluster to answer, and for an actor to start (or to
            restart after its node was lost) when no other actor is running.
    """

    address: str | None = None
    actors: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    shard_size: int = 64
    timeout: float = 15.0


def require_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ClipsearchError(RAY_MISSING) from e
    return ray


def connect(options: RayOptions) -> bool:
    """Connect to the cluster the options name, or start a local Ray instance; True when
    this call did (and the caller shuts it down), False when Ray was already initialised.

    Raises:
        ClusterUnavailableError: nothing answers at the address within ``options.timeout``,
            ``auto`` finds no cluster, or a ``ray://`` address lacks Ray Client.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if not address:
        # "local": a new instance even where a stopped `ray start` left its address behind
        local = dict(kwargs, address="local", include_dashboard=False)
        _init_bounded(ray, local, None, LOCAL_START_MIN_S)
        return True
    target = _resolve(address)
    _probe(address, target, options.timeout)
    _init_bounded(ray, dict(kwargs, address=address), address, options.timeout)
    return True


@contextlib.contextmanager
def ray_session(options: RayOptions | None) -> Iterator[None]:
    """Connected to Ray for the block (see :func:`connect`), and shut down after it when this
    block connected; nothing to do for None. Connecting (and checking that a node has room for
    an actor) before an index is opened or created keeps a failure from leaving a new, empty
    index folder behind."""
    if options is None:
        yield
        return
    started_here = connect(options)
    try:
        require_room(options, require_ray().nodes())
        yield
    finally:
        if started_here:
            require_ray().shutdown()


def _resolve(address: str) -> str:
    """The ``host:port`` to probe for an address, ``auto`` resolved as Ray resolves it."""
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401 -- Ray Client's transport
        except ImportError as e:
            raise ClusterUnavailableError(CLIENT_MISSING.format(address=address)) from e
        return address.removeprefix("ray://")
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:  # a Ray that moved it: connect without the early answer
        return ""
    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError:
        raise ClusterUnavailableError(
            "--ray-address auto: no running Ray cluster found on this machine; start one with "
            "`ray start --head`, or give the head's address (HOST:6379)"
        ) from None


def _probe(address: str, target: str, timeout: float) -> None:
    """Fail at once when nothing listens at ``host:port``: Ray would retry for minutes."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        if target:
            raise ClusterUnavailableError(f"--ray-address {address}: expected HOST:PORT")
        return
    shown = address if target == address else f"{address} ({target})"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except TimeoutError:
        cause = f"no answer within {timeout:g} s"
        raise ClusterUnavailableError(_unreachable(shown, cause)) from None
    except OSError as e:
        raise ClusterUnavailableError(_unreachable(shown, e.strerror or str(e))) from None


def _unreachable(shown: str, cause: str) -> str:
    return (
        f"cannot reach the Ray cluster at {shown}: {cause}; check that `ray start --head` "
        "runs there and that the port is open to this machine (or raise --ray-timeout)"
    )


def _init_bounded(ray: Any, kwargs: dict[str, Any], address: str | None, timeout: float) -> None:
    """``ray.init`` in a thread the caller waits for at most ``timeout`` seconds; Ctrl+C
    interrupts the wait. A connect that finishes after the caller gave up is shut down."""
    box: dict[str, Any] = {}
    abandoned = threading.Event()

    def init() -> None:
        try:
            ray.init(**kwargs)
            box["ok"] = True
            if abandoned.is_set():
                ray.shutdown()
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    worker = threading.Thread(target=init, name="ray-connect", daemon=True)
    quiet = _quiet_stderr() if address else contextlib.nullcontext()
    bound = timeout if address else max(timeout, LOCAL_START_MIN_S)
    with quiet:
        worker.start()
        deadline = time.monotonic() + bound
        try:
            while worker.is_alive() and time.monotonic() < deadline:
                worker.join(0.2)
        finally:
            if worker.is_alive():
                abandoned.set()
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    if "error" in box:
        raise ClusterUnavailableError(_connect_error(where, box["error"]))
    if "ok" not in box:
        raise ClusterUnavailableError(
            f"{where} did not answer within {bound:g} s; check that it is a Ray head "
            "(`ray status` there) or raise --ray-timeout"
        )


def _connect_error(where: str, e: BaseException) -> str:
    """What a failed ``ray.init`` means, in one line; Ray's token errors name the fix."""
    text = _brief(e)
    if "Token authentication is enabled" not in text:
        return f"cannot connect to {where}: {text}"
    wrong = "invalid or incorrect" in text
    cause = "rejected this machine's token" if wrong else "needs a token, and none was found here"
    return (
        f"{where} uses Ray token authentication and {cause}: copy ~/.ray/auth_token from its "
        "head node to this machine, or set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
    )


def _brief(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300] + ("…" if len(text) > 300 else "")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to a scratch file: Ray's core prints its connect retries there,
    from C++, past Python's logging. Python's own stderr writes are held back too."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@dataclass(frozen=True)
class Placement:
    """How many actors run, and why not more.

    Attributes:
        actors: actors to create.
        room: actors the live nodes have room for (None: no CPU or GPU is reserved per actor,
            so any number fits).
        nodes: live nodes.
    """

    actors: int
    room: int | None
    nodes: int


def plan_actors(options: RayOptions, shards: int, nodes: Sequence[Mapping[str, Any]]) -> Placement:
    """The actors to create for ``shards`` shards on these nodes (as ``ray.nodes()`` lists
    them): the ones asked for, clamped to the room on the live nodes and to the shards.

    Raises:
        ClusterUnavailableError: no live node has room for a single actor.
    """
    live = [n for n in nodes if n.get("Alive")]
    room = require_room(options, live)
    asked = options.actors or room or max(1, sum(int(_res(n, "CPU")) for n in live))
    actors = max(1, min(asked, room if room is not None else asked, shards))
    if options.actors and room is not None and options.actors > room:
        log.warning(
            "ray: %d encoder actors asked for, but the %d live nodes have room for %d (%s "
            "each); running %d",
            options.actors,
            len(live),
            room,
            _per_actor(options),
            actors,
        )
    return Placement(actors, room, len(live))


def require_room(options: RayOptions, nodes: Sequence[Mapping[str, Any]]) -> int | None:
    """How many actors the live nodes have room for (None: any number).

    Raises:
        ClusterUnavailableError: not one.
    """
    live = [n for n in nodes if n.get("Alive")]
    room = _room(options, live)
    if room == 0:
        raise ClusterUnavailableError(_no_room(options, live))
    return room


def _room(options: RayOptions, live: Sequence[Mapping[str, Any]]) -> int | None:
    asks = {k: v for k, v in (("CPU", options.num_cpus), ("GPU", options.num_gpus)) if v > 0}
    if not asks:
        return None
    return sum(min(math.floor(_res(n, k) / v + 1e-9) for k, v in asks.items()) for n in live)


def _res(node: Mapping[str, Any], key: str) -> float:
    return float(node.get("Resources", {}).get(key, 0.0))


def _per_actor(options: RayOptions) -> str:
    parts = [f"{options.num_cpus:g} CPU"]
    if options.num_gpus:
        parts.append(f"{options.num_gpus:g} GPU")
    return " and ".join(parts)


def _no_room(options: RayOptions, live: Sequence[Mapping[str, Any]]) -> str:
    if not live:
        return "ray: the cluster has no live node"
    cpus = max(_res(n, "CPU") for n in live)
    gpus = max(_res(n, "GPU") for n in live)
    return (
        f"ray: no node has room for one encoder actor of {_per_actor(options)}: the largest of "
        f"the {len(live)} live nodes has {cpus:g} CPU and {gpus:g} GPU; lower --ray-cpus or "
        "--ray-gpus, or add a node that has them"
    )


def describe_nodes(node_ids: Sequence[str], nodes: Sequence[Mapping[str, Any]]) -> str:
    """Nodes by address and the start of their id: ``10.0.0.7 (node 1a2b3c4d)``."""
    by_id = {n.get("NodeID"): n for n in nodes}
    out = []
    for node_id in node_ids:
        addr = by_id.get(node_id, {}).get("NodeManagerAddress", "?")
        out.append(f"{addr} (node {node_id[:8]})")
    return ", ".join(out)
