"""Distributed embedding on Ray.

The driver does what the local indexer does — walks the folders, diffs them against the
catalog, resolves moves, commits — and hands only the expensive part to Ray: actors that each
load the model once, then read, decode, preprocess and encode shards of files. Shards come
back as they finish and each is committed in its own transaction, so an interrupted job
resumes shard by shard. Workers read files by path: on a cluster, every node must see the
photos at the same paths (a shared or network file system).

Faults: a shard whose actor is lost (its node died, its process crashed) goes back to the
queue and on to another live actor; Ray restarts the lost actor where a node has room. Results
are accepted once per shard and committed on the driver, so a retried shard is never
committed twice. When no actor can run for ``RayOptions.timeout`` seconds, the run stops with
one line that names the lost nodes; what was committed stays, and a rerun resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ClipsearchError, ClusterUnavailableError
from clipsearch.index.raycluster import (
    RayOptions,
    connect,
    describe_nodes,
    plan_actors,
    require_ray,
)
from clipsearch.media.video import VideoOptions

if TYPE_CHECKING:
    from clipsearch.index.pipeline import Candidate, Prepared
    from clipsearch.models.encoder import Encoder
    from clipsearch.models.identity import ModelSpec

__all__ = ["EncoderWorker", "RayExecutor", "RayOptions", "WorkerSetup", "require_ray"]

log = logging.getLogger(__name__)

SHARD_TRIES = 3  # a shard lost with its actor this often stops the run: a file may crash workers
ACTOR_RESTARTS = 3  # Ray restarts a lost actor where there is room, this often at most
POLL_S = 0.5  # how often the driver looks again at actors waiting for room


@dataclass(frozen=True)
class WorkerSetup:
    """What each actor needs to prepare and encode as the index would.

    Attributes:
        spec: the index's model spec, as ``{"model": ..., "pretrained": ...}``.
        key: the index's model identity key; a worker whose weights differ refuses to run.
        device: the device each worker runs the model on.
        precision: the model's precision there.
        draft: decode JPEGs as DCT drafts (see :class:`clipsearch.index.pipeline.IndexOptions`).
        compile: compile each worker's image tower (see ``Encoder.compile_image_tower``).
        video: which frames of videos to take (see :class:`clipsearch.media.video.VideoOptions`).
    """

    spec: dict[str, Any]
    key: str
    device: str
    precision: str
    draft: bool = True
    compile: bool = False
    video: VideoOptions = VideoOptions()

    @classmethod
    def for_model(
        cls,
        spec: ModelSpec,
        key: str,
        device: str,
        precision: str,
        *,
        draft: bool = True,
        compile: bool = False,
        video: VideoOptions | None = None,
    ) -> WorkerSetup:
        """The setup for a model spec and the identity key its weights must have."""
        spec_dict = {"model": spec.model, "pretrained": spec.pretrained}
        video = video or VideoOptions()
        return cls(spec_dict, key, device, precision, draft=draft, compile=compile, video=video)


class EncoderWorker:
    """Runs inside a Ray actor: one model per actor, loaded by its first shard."""

    def __init__(self, setup: WorkerSetup):
        self.setup = setup
        self._encoder: Encoder | None = None

    def ready(self) -> str:
        """The id of the node this actor runs on; answers once the actor has started."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from clipsearch.models.identity import ModelSpec
            from clipsearch.models.loading import load_spec

            setup = self.setup
            spec = ModelSpec(**setup.spec)
            encoder = load_spec(spec, device=setup.device, precision=setup.precision)
            if encoder.identity.key != setup.key:
                raise ClipsearchError(
                    f"worker on {os.uname().nodename} loaded different weights for "
                    f"{spec.describe()} than the index was built with"
                )
            if setup.compile:
                encoder.compile_image_tower()
            self._encoder = encoder
        return self._encoder

    def process(self, shard: Sequence[Candidate], gone_shas: frozenset[str]) -> list[Prepared]:
        import torch

        from clipsearch.index.pipeline import prepare_candidate

        draft = self.setup.draft
        video = self.setup.video
        out = [prepare_candidate(c, lambda: self.encoder, draft, gone_shas, video) for c in shard]
        todo = [p for p in out if p.pixels is not None]
        if todo:
            vectors = self.encoder.encode_pixels(torch.stack([p.pixels for p in todo]))
            for p, vec in zip(todo, vectors, strict=True):
                p.vector = np.ascontiguousarray(vec)
                p.pixels = None  # don't ship tensors back to the driver
        for p in out:  # a video's later frames
            if p.frames:
                vecs = self.encoder.encode_pixels(torch.stack([px for _, px in p.frames]))
                p.frames = [
                    (t, np.ascontiguousarray(v)) for (t, _), v in zip(p.frames, vecs, strict=True)
                ]
        return out


class RayExecutor:
    """Prepares and encodes candidates on Ray; yields them to the indexer as shards finish."""

    def __init__(self, options: RayOptions, setup: WorkerSetup):
        self.options = options
        self.setup = setup

    def prepared(
        self, candidates: list[Candidate], gone_shas: frozenset[str]
    ) -> Iterator[Prepared]:
        ray = require_ray()
        started_here = connect(self.options)
        try:
            if candidates:
                yield from _ShardRun(ray, self.options, self.setup, candidates, gone_shas).run()
        finally:
            if started_here:
                ray.shutdown()


@dataclass(eq=False)
class _Actor:
    """One encoder actor as the driver tracks it: starting (or restarting after a loss) while
    ``node`` is None, live once it has answered ``ready``, and busy while ``task`` is set."""

    handle: Any
    node: str | None = None
    probe: Any = None  # the ready() call in flight while it starts or restarts
    probe_at: float = 0.0  # when to ask again, after Ray said it is restarting
    task: Any = None
    shard: int = -1
    dead: bool = False  # Ray will not restart it any more
    started: bool = False  # it answered once


class _ShardRun:
    """One run's shards on one set of actors: dispatch, collect, retry what was lost."""

    def __init__(
        self,
        ray: Any,
        options: RayOptions,
        setup: WorkerSetup,
        candidates: list[Candidate],
        gone_shas: frozenset[str],
    ):
        self.ray = ray
        self.options = options
        self.setup = setup
        size = options.shard_size
        self.shards = [candidates[i : i + size] for i in range(0, len(candidates), size)]
        self.queue = deque(range(len(self.shards)))
        self.tries = [0] * len(self.shards)
        self.finished: set[int] = set()
        self.gone_shas = gone_shas
        self.actors: list[_Actor] = []
        self.lost_on: list[str] = []  # nodes whose actors were lost, in order
        self.none_live_since: float | None = time.monotonic()
        self.started = time.monotonic()
        self.warned_start = False

    def run(self) -> Iterator[Prepared]:
        ray, options = self.ray, self.options
        placement = plan_actors(options, len(self.shards), ray.nodes())
        actor_cls = ray.remote(
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus or None,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=0,  # the driver retries a lost shard on another actor
        )(EncoderWorker)
        self.gone_ref = ray.put(self.gone_shas)
        try:
            for _ in range(placement.actors):
                actor = _Actor(actor_cls.remote(self.setup))
                actor.probe = actor.handle.ready.remote()
                self.actors.append(actor)
            yield from self._loop()
        finally:
            for actor in self.actors:
                with contextlib.suppress(Exception):  # already gone with its node
                    ray.kill(actor.handle, no_restart=True)

    def _loop(self) -> Iterator[Prepared]:
        while len(self.finished) < len(self.shards):
            self._dispatch()
            if all(a.dead for a in self.actors):  # Ray restarts none of them any more
                raise ClusterUnavailableError(self._stuck_message())
            refs = self._in_flight()
            shard, result = -1, None
            if refs:
                ready, _ = self.ray.wait(list(refs), num_returns=1, timeout=POLL_S)
                if ready:
                    shard, result = self._collect(ready[0], *refs[ready[0]])
            else:  # every actor waits to be asked again whether it has restarted
                time.sleep(POLL_S)
            self._check_waiting()
            if result is None or shard in self.finished:
                continue
            self.finished.add(shard)
            self._dispatch()  # the actor's next shard runs while this one is committed
            yield from result

    def _dispatch(self) -> None:
        now = time.monotonic()
        for actor in self.actors:
            if actor.dead:
                continue
            if actor.node is None and actor.probe is None and now >= actor.probe_at:
                actor.probe = actor.handle.ready.remote()
            elif actor.node is not None and actor.task is None and self.queue:
                actor.shard = self.queue.popleft()
                actor.task = actor.handle.process.remote(self.shards[actor.shard], self.gone_ref)

    def _in_flight(self) -> dict[Any, tuple[_Actor, bool]]:
        """The calls in flight: shard tasks, and ready() probes (True)."""
        refs = {a.task: (a, False) for a in self.actors if a.task is not None}
        refs.update({a.probe: (a, True) for a in self.actors if a.probe is not None})
        return refs

    def _collect(
        self, ref: Any, actor: _Actor, is_probe: bool
    ) -> tuple[int, list[Prepared] | None]:
        """A finished call: a shard's result, an actor that has started, or a loss."""
        from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

        try:
            value = self.ray.get(ref)
        except RayTaskError as e:
            if isinstance(e.cause, ClipsearchError):  # the worker's model cannot load, ...
                raise e.cause from None
            raise
        except (RayActorError, ObjectLostError) as e:
            self._lost(actor, is_probe, e)
            return -1, None
        if is_probe:
            actor.probe, actor.node, actor.started = None, value, True
            return -1, None
        shard, actor.task, actor.shard = actor.shard, None, -1
        return shard, value

    def _lost(self, actor: _Actor, is_probe: bool, error: Exception) -> None:
        """The actor is gone: its shard goes back to the front of the queue, and it is asked
        again (Ray restarts it where there is room) unless Ray gave it up."""
        from ray.exceptions import ActorDiedError

        if is_probe:
            actor.probe = None
        else:
            shard, actor.task, actor.shard = actor.shard, None, -1
            self.tries[shard] += 1
            if self.tries[shard] >= SHARD_TRIES:
                raise ClusterUnavailableError(self._poison_message(shard))
            self.queue.appendleft(shard)
            where = self._where(actor.node)
            log.warning(
                "ray: lost the encoder actor on %s; its shard of %d files goes to another actor",
                where,
                len(self.shards[shard]),
            )
        if actor.node is not None and actor.node not in self.lost_on:
            self.lost_on.append(actor.node)
        actor.node = None
        actor.probe_at = time.monotonic() + POLL_S
        actor.dead = isinstance(error, ActorDiedError)  # restarting ones are "unavailable"

    def _check_waiting(self) -> None:
        """Bound the time without any live actor; warn once about actors that never start."""
        now = time.monotonic()
        live = [a for a in self.actors if a.node is not None]
        if live:
            self.none_live_since = None
            starting = [a for a in self.actors if not a.dead and not a.started]
            if starting and not self.warned_start and now - self.started > self.options.timeout:
                self.warned_start = True
                log.warning(
                    "ray: %d of %d encoder actors started; the others wait for room",
                    len(live),
                    len(self.actors),
                )
            return
        if self.none_live_since is None:
            self.none_live_since = now
        elif now - self.none_live_since > self.options.timeout:
            raise ClusterUnavailableError(self._stuck_message())

    def _where(self, node: str | None) -> str:
        if node is None:
            return "a node"
        return describe_nodes([node], self.ray.nodes())

    def _stuck_message(self) -> str:
        timeout = f"{self.options.timeout:g} s"
        done = f"{len(self.finished)} of {len(self.shards)} shards were encoded"
        resume = "what was committed is kept: run the same command again to resume"
        if not self.lost_on:
            return (
                f"ray: no encoder actor started within {timeout} ({done}); the cluster's "
                f"nodes are busy or cannot start workers (see `ray status`); {resume}"
            )
        nodes = self.ray.nodes()
        alive = {n.get("NodeID") for n in nodes if n.get("Alive")}
        down = [n for n in self.lost_on if n not in alive]
        lost = describe_nodes(down or self.lost_on, nodes)
        what = f"lost node(s) {lost}" if down else f"lost the actors on {lost}"
        return (
            f"ray: no encoder actor can run ({what}; no live node had room for them within "
            f"{timeout}); {done}; {resume}"
        )

    def _poison_message(self, shard: int) -> str:
        first = self.shards[shard][0].found.path
        return (
            f"ray: a shard of {len(self.shards[shard])} files (from {first}) was lost with its "
            f"actor {SHARD_TRIES} times; a file in it may crash the workers (out of memory?); "
            "what was committed is kept: run the same command again to resume"
        )
