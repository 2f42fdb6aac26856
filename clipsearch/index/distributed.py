"""Distributed embedding on Ray.

The driver does what the local indexer does — walks the folders, diffs them against the
catalog, resolves moves, commits — and hands only the expensive part to Ray: actors that each
load the model once, then read, decode, preprocess and encode shards of files. Shards come
back as they finish and each is committed in its own transaction, so an interrupted job
resumes shard by shard. Workers read files by path: on a cluster, every node must see the
photos at the same paths (a shared or network file system).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ClipsearchError

if TYPE_CHECKING:
    from clipsearch.index.pipeline import Candidate, Prepared
    from clipsearch.models.identity import ModelSpec

RAY_MISSING = "--executor ray needs Ray: pip install 'clipsearch[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run the Ray actors.

    Args:
        address: a running cluster (``ray://host:10001`` or ``auto``); None starts a local
            Ray instance on this machine for the duration of the run.
        actors: how many encoder actors; default: as many as the cluster's CPUs (or GPUs, when
            ``num_gpus`` is set) allow.
        num_cpus: CPUs reserved per actor.
        num_gpus: GPUs reserved per actor (fractions share a GPU).
        shard_size: files per task; also the size of each committed transaction.
    """

    address: str | None = None
    actors: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    shard_size: int = 64


def require_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ClipsearchError(RAY_MISSING) from e
    return ray


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
    """

    spec: dict[str, Any]
    key: str
    device: str
    precision: str
    draft: bool = True
    compile: bool = False

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
    ) -> WorkerSetup:
        """The setup for a model spec and the identity key its weights must have."""
        spec_dict = {"model": spec.model, "pretrained": spec.pretrained}
        return cls(spec_dict, key, device, precision, draft=draft, compile=compile)


class EncoderWorker:
    """Runs inside a Ray actor: one model per actor, many shards per model."""

    def __init__(self, setup: WorkerSetup):
        from clipsearch.models.identity import ModelSpec
        from clipsearch.models.loading import load_spec

        spec = ModelSpec(**setup.spec)
        self.encoder = load_spec(spec, device=setup.device, precision=setup.precision)
        if self.encoder.identity.key != setup.key:
            raise ClipsearchError(
                f"worker on {os.uname().nodename} loaded different weights for "
                f"{spec.describe()} than the index was built with"
            )
        if setup.compile:
            self.encoder.compile_image_tower()
        self.draft = setup.draft

    def process(self, shard: Sequence[Candidate], gone_shas: frozenset[str]) -> list[Prepared]:
        import torch

        from clipsearch.index.pipeline import prepare_candidate

        out = [prepare_candidate(c, lambda: self.encoder, self.draft, gone_shas) for c in shard]
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
        from ray.util import ActorPool

        started_here = not ray.is_initialized()
        if started_here:
            if self.options.address:
                ray.init(address=self.options.address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        try:
            actor_cls = ray.remote(
                num_cpus=self.options.num_cpus, num_gpus=self.options.num_gpus or None
            )(EncoderWorker)
            n = self.options.actors or self._default_actors(ray)
            n = max(1, min(n, -(-len(candidates) // self.options.shard_size) or 1))
            actors = [actor_cls.remote(self.setup) for _ in range(n)]
            pool = ActorPool(actors)
            gone_ref = ray.put(gone_shas)
            size = self.options.shard_size
            shards = [candidates[i : i + size] for i in range(0, len(candidates), size)]
            for result in pool.map_unordered(
                lambda actor, shard: actor.process.remote(shard, gone_ref), shards
            ):
                yield from result
        finally:
            if started_here:
                ray.shutdown()

    def _default_actors(self, ray: Any) -> int:
        resources = ray.cluster_resources()
        if self.options.num_gpus:
            return max(1, int(resources.get("GPU", 0) // self.options.num_gpus))
        return max(1, int(resources.get("CPU", 1) // max(self.options.num_cpus, 1e-9)))
