"""`ImageIndex`: the public face of an index directory.

An index is a folder::

    catalog.sqlite   the catalog (source of truth): images, roots, vectors, errors, meta
    vectors.faiss    the FAISS index, derived from the catalog's vectors
    vectors.json     which catalog generation vectors.faiss reflects
    lock             held by the one process that may write

Readers never lock: SQLite's WAL gives them the last committed state, and a FAISS file that
lags behind the catalog is brought up to date in memory from the stored vectors.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import (
    ClipsearchError,
    EmptyIndexError,
    ImageReadError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    QueryError,
)
from clipsearch.index.duplicates import (
    DEFAULT_THRESHOLD,
    DuplicateGroup,
    check_threshold,
    find_duplicates,
)
from clipsearch.index.filters import DateLike, Filters
from clipsearch.index.query import (
    Query,
    Term,
    check_k,
    combine,
    gather_terms,
    path_filter,
    rank,
    require_positive,
)
from clipsearch.media.photometa import PhotoMeta
from clipsearch.media.video import DEFAULT_INTERVAL, DEFAULT_MAX_FRAMES, VideoOptions
from clipsearch.models.cpuencoder import CpuImageEncoder
from clipsearch.models.identity import ModelIdentity, ModelSpec, spec_key
from clipsearch.models.imagetower import cached_identity
from clipsearch.models.loading import load_image_encoder, load_spec
from clipsearch.progress import Progress
from clipsearch.store.catalog import CATALOG_FILE, Catalog, ErrorRecord
from clipsearch.store.migrations import SCHEMA_VERSION
from clipsearch.store.vectors import (
    IndexLayout,
    VectorIndex,
    open_index,
    rebuild_index,
    saved_index_is_current,
)

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.index.distributed import RayExecutor, RayOptions
    from clipsearch.index.pipeline import Indexer, IndexOptions, IndexReport
    from clipsearch.index.styles import IndexStyles
    from clipsearch.models.encoder import Encoder
    from clipsearch.models.texttower import NumpyTextEncoder
    from clipsearch.store.repair import RepairReport
    from clipsearch.style.labels import Prediction

LOCK_FILE = "lock"


@dataclass(frozen=True)
class SearchResult:
    """One hit: an indexed image and its cosine similarity to the query. A video is one hit,
    at its best frame: ``id`` is that frame's and ``frame_time`` its time in seconds."""

    id: int
    path: str
    score: float
    style: str | None = None
    style_score: float | None = None
    width: int = 0
    height: int = 0
    taken: str | None = None  # ISO 8601, in the photo's own offset when EXIF gave one
    taken_source: str | None = None  # "exif" or "mtime"
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None
    frame_time: float | None = None  # seconds into a video; None for an image

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReindexReport:
    """What :meth:`ImageIndex.reindex` built."""

    layout: IndexLayout
    vectors: int
    memory_bytes: int  # estimated RAM of the new index
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_type": self.layout.type,
            "layout": self.layout.to_dict(),
            "vectors": self.vectors,
            "memory_bytes": self.memory_bytes,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class IndexInfo:
    """What `clipsearch info` shows."""

    path: str
    count: int
    model: str
    pretrained: str | None
    weights_sha256: str | None
    dim: int
    image_size: int
    index_type: str
    roots: tuple[str, ...]
    errors: int
    schema_version: int
    created: float
    text_sha256: str | None = None  # a local-dir: model's HF tokenizer and tower config

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roots"] = list(self.roots)
        return d


class ImageIndex:
    """An index of images on disk: add folders, search by text, image or both.

    Open one with :meth:`open`, :meth:`create` or :meth:`open_or_create`; use it as a context
    manager or call :meth:`close`. The model is loaded on first use.

    Example::

        with ImageIndex.open_or_create("indexes/photos", model="demo") as index:
            index.add(["~/Pictures"])
            for hit in index.search("a red circle", k=5):
                print(hit.score, hit.path)
    """

    def __init__(
        self,
        path: Path,
        catalog: Catalog,
        identity: ModelIdentity,
        spec: ModelSpec,
        *,
        device: str = "auto",
        precision: str = "fp32",
    ):
        self.path = path
        self.catalog = catalog
        self.identity = identity
        self.spec = spec
        self.device = device
        self.precision = precision
        self._encoder: Encoder | None = None
        self._image_encoder: Encoder | None = None  # the image tower alone, for indexing
        self._query_images: CpuImageEncoder | None = None  # for query images, without torch
        self.created = False
        """True when this object created the index (:meth:`create`, or :meth:`open_or_create`
        of a folder that held none)."""
        self._text_encoder: Encoder | None = None
        self._numpy_text: NumpyTextEncoder | None | bool = None  # False: not available
        self._vectors: VectorIndex | None = None
        self._vectors_generation: int | None = None
        self._writer = False  # this object holds the write lock

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, device: str = "auto", precision: str = "fp32"
    ) -> ImageIndex:
        """Open an existing index.

        Raises:
            IndexNotFoundError: no index at ``path``.
            CorruptIndexError: the catalog cannot be read.
        """
        folder = Path(path).expanduser().absolute()
        if not (folder / CATALOG_FILE).is_file():
            raise IndexNotFoundError(
                f"no index at {folder}; create one with `clipsearch --index {folder} index FOLDER`"
            )
        catalog = Catalog.open(folder / CATALOG_FILE)
        model = catalog.get_meta("model")
        if model is None:
            catalog.close()
            raise IndexNotFoundError(
                f"{folder} holds no finished index (no model recorded); create it with "
                f"`clipsearch --index {folder} index FOLDER`"
            )
        identity = ModelIdentity.from_dict(model)
        spec = ModelSpec(**catalog.get_meta("model_spec"))
        return cls(folder, catalog, identity, spec, device=device, precision=precision)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        model: str | None = None,
        pretrained: str | None = None,
        *,
        device: str = "auto",
        precision: str = "fp32",
    ) -> ImageIndex:
        """Create a new index for a model (its width and preprocessing are what its image
        tower's cache record says, else what loading it now gives)."""
        folder = Path(path).expanduser().absolute()
        if (folder / CATALOG_FILE).exists() and not _unfinished(folder):
            raise ClipsearchError(f"an index already exists at {folder}")
        spec = ModelSpec.from_user(model, pretrained)
        identity = cached_identity(spec)
        encoder = None
        if identity is None:
            encoder = load_spec(spec, device=device, precision=precision, towers="image")
            identity = encoder.identity
        folder.mkdir(parents=True, exist_ok=True)
        _adopt_bundled_style_head(spec, folder)
        catalog = Catalog.open(folder / CATALOG_FILE, create=True)
        catalog.set_meta(
            model=identity.to_dict(),
            model_spec={"model": spec.model, "pretrained": spec.pretrained},
            index_type="flat",
            created=time.time(),
            generation=0,
        )
        index = cls(folder, catalog, identity, spec, device=device, precision=precision)
        if encoder is not None and encoder.towers == "image":
            index._image_encoder = encoder
        elif encoder is not None:
            index._encoder = encoder
        index.created = True
        return index

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        model: str | None = None,
        pretrained: str | None = None,
        *,
        device: str = "auto",
        precision: str = "fp32",
        model_is_default: bool = False,
    ) -> ImageIndex:
        """Open the index at ``path``, or create it. A model given for an existing index must
        be the one it was built with, unless ``model_is_default``: then ``model`` and
        ``pretrained`` are only a default for a new index (the config file's, see
        :mod:`clipsearch.settings`) and an existing index keeps its own.

        Raises:
            IndexMismatchError: the index was built with another model.
        """
        folder = Path(path).expanduser().absolute()
        if not (folder / CATALOG_FILE).is_file() or _unfinished(folder):
            return cls.create(folder, model, pretrained, device=device, precision=precision)
        index = cls.open(folder, device=device, precision=precision)
        if not model_is_default and (model is not None or pretrained is not None):
            try:
                index.check_model(ModelSpec.from_user(model, pretrained))
            except BaseException:
                index.close()
                raise
        return index

    def check_model(self, spec: ModelSpec) -> None:
        """Refuse a model other than the one this index's vectors were made with."""
        if spec_key(spec) != self.identity.key:
            raise IndexMismatchError(
                f"index {self.path} was built with model {self.identity.describe()}, not "
                f"{spec.describe()}; vectors of different models cannot be compared. Use "
                "another --index for the new model, or leave out --model to use the index's own"
            )

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- model and vectors ------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        """The index's model, loaded on first use and checked against what the index records."""
        if self._encoder is None:
            encoder = load_spec(self.spec, device=self.device, precision=self.precision)
            self._check_identity(encoder)
            self._encoder = encoder
            self._text_encoder = None
            self._image_encoder = None
        return self._encoder

    @property
    def image_encoder(self) -> Encoder:
        """The model for images: the whole model when it is loaded, else the image tower
        alone, which loads without open_clip once the model has been loaded before (see
        :mod:`clipsearch.models.imagetower`); checked against what the index records."""
        if self._encoder is not None:
            return self._encoder
        if self._image_encoder is None:
            encoder = load_spec(
                self.spec, device=self.device, precision=self.precision, towers="image"
            )
            self._check_identity(encoder)
            if encoder.towers != "image":  # no image tower of its own: the whole model
                self._encoder, self._text_encoder = encoder, None
                return encoder
            self._image_encoder = encoder
        return self._image_encoder

    def _indexing_encoder(self, images: int | None = None) -> Encoder | CpuImageEncoder:
        """The image tower for :meth:`add`, a run that encodes at most ``images`` pictures
        (None: many, or unknown): the model already loaded, else, once the model has been
        loaded before, the NumPy tower for a small run or the ONNX Runtime one for a larger
        fp32 run (no torch import; see :func:`~clipsearch.models.loading.load_image_encoder`),
        else the torch tower.

        New images get style labels, so the labeller is made first: a zero-shot labeller's
        text vectors come from the text tower, whose weights are let go before the image
        tower loads, so that the two are never in memory together (a later text query maps
        them again)."""
        self.styles.prepare()
        self._numpy_text, self._text_encoder = None, None
        if self._encoder is not None or self._image_encoder is not None:
            return self.image_encoder  # loaded already: no start-up left to save
        return self._quickest_image_encoder(images)

    def _quickest_image_encoder(self, images: int | None) -> Encoder | CpuImageEncoder:
        """:func:`~clipsearch.models.loading.load_image_encoder` for ``images`` pictures,
        checked; a torch encoder is kept as the index's (a NumPy or ONNX Runtime one is not: it
        is mapped, not read, so there is nothing worth keeping for an indexing run)."""
        encoder = load_image_encoder(
            self.spec, self.identity, images=images, device=self.device, precision=self.precision
        )
        self._check_identity(encoder)
        if encoder.towers == "both":  # no image tower of its own: the whole model
            self._encoder = encoder
        elif not isinstance(encoder, CpuImageEncoder):
            self._image_encoder = encoder
        return encoder

    def _query_image_encoder(self) -> Encoder | CpuImageEncoder:
        """The image tower for a query image that is not indexed: the torch one when it is
        loaded, else the quickest to start for one image (no torch import once the model was
        loaded before, see :func:`~clipsearch.models.loading.load_image_encoder`), kept for
        the next query image."""
        if self._encoder is not None or self._image_encoder is not None:
            return self.image_encoder
        if self._query_images is None:
            encoder = self._quickest_image_encoder(1)
            if not isinstance(encoder, CpuImageEncoder):
                return encoder
            self._query_images = encoder
        return self._query_images

    def _check_identity(self, encoder: Encoder) -> None:
        if encoder.identity.key != self.identity.key or encoder.dim != self.identity.dim:
            raise IndexMismatchError(
                f"the weights of model {self.spec.describe()} changed since index "
                f"{self.path} was built (was {self.identity.describe()}, now "
                f"{encoder.identity.describe()}); restore them or index into a new folder"
            )

    def prepare_text_queries(self) -> None:
        """Make ahead of time what quick text queries need: the ONNX Runtime twin of the
        NumPy text tower (:mod:`clipsearch.models.onnxtext`), which a process otherwise makes
        at its second query. For long-lived front ends (``serve``), in a background thread."""
        encoder = self._torch_free_text()
        if encoder is not None:
            encoder.warm()

    def _torch_free_text(self) -> NumpyTextEncoder | None:
        """The text tower without torch, where the options and the model's record allow it
        (looked up once)."""
        if self._numpy_text is None:
            from clipsearch.models.texttower import applies, cached_text_encoder

            found = None
            if applies(self.device, self.precision):
                found = cached_text_encoder(self.spec, self.identity)
            self._numpy_text = found if found is not None else False
        return self._numpy_text or None

    @property
    def text_encoder(self) -> Encoder | NumpyTextEncoder:
        """The model for text queries. On the CPU in fp32 (or ``auto``), the text tower in
        NumPy when the model's cache record allows it (no torch import; the same vectors
        whatever else this process loaded: see :mod:`clipsearch.models.texttower`); else the full
        model when it is loaded; else only its text tower in torch (a third of the weights
        to read, for a fast first search)."""
        found = self._torch_free_text()
        if found is not None:
            return found
        if self._encoder is not None:
            return self._encoder
        if self._text_encoder is None:
            encoder = load_spec(
                self.spec, device=self.device, precision=self.precision, towers="text"
            )
            if encoder.identity.key != self.identity.key or encoder.dim != self.identity.dim:
                return self.encoder  # raises the mismatch error with the full story
            self._text_encoder = encoder
        return self._text_encoder

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index, loaded on first use and synced with the catalog."""
        generation = self.catalog.generation()
        if self._vectors is None:
            # Readers map the file (instant, shared pages); a writer will change it: copy it in.
            mmap = not self._writer
            vi, saved = open_index(self.path, self.catalog, self.identity.dim, mmap=mmap)
            self._vectors, self._vectors_generation = vi, saved
        if self._vectors_generation != generation:
            self._vectors.sync(self.catalog)
            self._vectors_generation = generation
        return self._vectors

    def save_vectors(self) -> None:
        """Write the FAISS file for the current catalog generation (writers only). Not loaded
        (a run that changed no ids): only when the saved file lags the catalog, as after a
        crash, is it loaded (synced with the catalog) and saved."""
        if self._vectors is None and saved_index_is_current(self.path, self.catalog):
            return
        vectors = self._vectors if self._vectors is not None else self.vectors  # loads, syncs
        if vectors.needs_compaction:  # HNSW tombstones: rebuild the graph
            vectors.compact(self.catalog)
        vectors.save(self.path, self.catalog.generation())

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the index's write lock; a second writer is refused at once.

        The lock is an ``flock`` on ``lock``: the kernel releases it when the holder dies, even
        by SIGKILL, so a crashed run never blocks the next one.
        """
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise IndexLockedError(
                    f"index {self.path} is being written by process {holder}; wait for it to "
                    "finish (searches keep working meanwhile)"
                ) from e
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._writer = True
            yield
        finally:
            self._writer = False
            os.close(fd)

    # --- writing ----------------------------------------------------------------------------

    def add(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        exclude: Sequence[str] = (),
        include_hidden: bool = False,
        batch_size: int | None = None,
        workers: int | None = None,
        exact_decode: bool = False,
        compile: bool = False,
        video_interval: float = DEFAULT_INTERVAL,
        video_max_frames: int = DEFAULT_MAX_FRAMES,
        progress: Progress | None = None,
        executor: RayOptions | None = None,
        decode: str = "auto",
        devices: str | Sequence[str] = (),
    ) -> IndexReport:
        """Index the images and videos below some folders, incrementally.

        Unchanged files are skipped, changed ones re-encoded, moved ones recognised by their
        content, and files gone from these folders removed. A file that cannot be read is
        recorded in :meth:`errors` and the run goes on.

        Args:
            paths: folders to index.
            exclude: glob patterns for files or folders to skip.
            include_hidden: also index dot-files and dot-folders.
            batch_size: images per model call and per committed transaction (default: what
                suits the device, see :data:`clipsearch.models.runtime.BATCH_SIZES`).
            workers: decoding threads (default: up to 4).
            exact_decode: decode every pixel of JPEGs instead of DCT-scaled drafts at twice
                the model's input size (slower; the embeddings barely differ).
            compile: compile the image tower with ``torch.compile`` first: a slow compile
                once, then somewhat faster batches (see :meth:`Encoder.compile_image_tower`);
                for runs of thousands of images. Where it cannot compile, a warning is logged
                and the run goes on uncompiled.
            video_interval: seconds between the frames taken from a video; a scene change
                adds one in between (videos need PyAV: the ``video`` extra; without it they
                are counted in the report's ``skipped_videos``).
            video_max_frames: frames taken from one video at most.
            progress: receives start/advance/close events.
            executor: run the decoding and encoding on Ray with these options instead of in
                this process (see :mod:`clipsearch.index.distributed`); each Ray shard is committed
                as one batch, and a shard lost with its node goes to another actor.
            decode: where JPEGs decode: ``cpu`` (PIL), ``device`` (in batches where the model
                runs, nvJPEG on CUDA; PIL for files it refuses) or ``auto`` (device on CUDA).
            devices: encode on several devices, e.g. ``"0,1"``: each a model copy and a share.

        Raises:
            IndexLockedError: another process is writing to this index.
            ClusterUnavailableError: the Ray cluster does not answer, has no room for an
                encoder actor, or lost every actor; what was committed stays.
        """
        from clipsearch.index.devices import parse_devices  # not for reads
        from clipsearch.index.pipeline import IndexOptions, check_roots

        roots = check_roots(paths)
        draft, video = not exact_decode, VideoOptions(video_interval, video_max_frames)
        remote = None if executor is None else self._ray_executor(executor, draft, compile, video)
        if executor is not None:
            batch_size = executor.shard_size
        options = IndexOptions(
            exclude=tuple(exclude),
            include_hidden=include_hidden,
            batch_size=batch_size,
            workers=workers or IndexOptions.workers,
            draft=draft,
            compile=compile,
            video=video,
            decode=decode,
            devices=parse_devices(devices),
        )
        with self.writing():
            report = self._indexer(options, progress, remote).run(roots)
            self._vectors_generation = self.catalog.generation()
        return report

    def _ray_executor(
        self, options: RayOptions, draft: bool, compile: bool, video: VideoOptions
    ) -> RayExecutor:
        """The Ray executor of :meth:`add`, its actors set up with this index's model."""
        from clipsearch.index.distributed import RayExecutor, WorkerSetup

        model = (self.spec, self.identity.key, self.device, self.precision)
        setup = WorkerSetup.for_model(*model, draft=draft, compile=compile, video=video)
        return RayExecutor(options, setup)

    def _indexer(
        self, options: IndexOptions, progress: Progress | None, remote: RayExecutor | None
    ) -> Indexer:
        """The local indexer of :meth:`add`, on this index's catalog, vectors and model."""
        from clipsearch.index.pipeline import Indexer

        return Indexer(
            self.catalog,
            lambda: self.vectors,
            self._indexing_encoder,
            options,
            progress,
            save=self.save_vectors,
            styles=self.styles.label,
            executor=remote,
        )

    def remove(self, ids: Sequence[int]) -> int:
        """Drop images from the index by id (a video's file row takes its frames along);
        returns how many were there."""
        with self.writing():
            present = list(self.catalog.images(list(ids)))
            with_frames = self.catalog.with_frames(present)
            self.catalog.remove(present)
            self.vectors.remove(np.asarray(with_frames, dtype=np.int64))
            self._vectors_generation = self.catalog.generation()
            self.save_vectors()
        return len(present)

    def reindex(
        self, index_type: str = "auto", *, memory_budget: int | None = None
    ) -> ReindexReport:
        """Rebuild the vector index from the stored vectors, in another FAISS layout.

        The type is recorded and kept by later runs of :meth:`add` (new vectors go into the
        trained index) and by every reader.

        Args:
            index_type: ``flat`` (exact), ``hnsw``, ``ivf``, ``ivfpq``, ``ivf-ondisk`` (inverted
                lists in a memory-mapped file, for collections larger than RAM), or ``auto``:
                exact up to 250k images, then HNSW if it fits ``memory_budget``, else IVF-PQ if
                that fits, else IVF on disk (see :func:`clipsearch.store.vectors.plan_layout`).
            memory_budget: bytes the vector index may use (default: a quarter of the RAM).

        Raises:
            IndexLockedError: another process is writing to this index.
        """
        started = time.monotonic()
        with self.writing():
            generation = self.catalog.generation()
            vi = rebuild_index(
                self.path, self.catalog, self.identity.dim, index_type, budget_bytes=memory_budget
            )
            self._vectors, self._vectors_generation = vi, generation
        layout = vi.layout
        return ReindexReport(
            layout=layout,
            vectors=vi.ntotal,
            memory_bytes=layout.memory_bytes(vi.ntotal, self.identity.dim),
            seconds=time.monotonic() - started,
        )

    def repair(self) -> RepairReport:
        """Check the catalog and rebuild the FAISS file from the vectors stored in it.

        Images whose stored vector is missing or unusable are dropped from the catalog and
        listed in the report; the next :meth:`add` of their folders encodes them again.

        Raises:
            IndexLockedError: another process is writing to this index.
            CorruptIndexError: the catalog itself is damaged: restore it or index again.
        """
        from clipsearch.store.repair import repair_store  # SQLAlchemy: not for the readers

        with self.writing():
            report, rebuilt = repair_store(self.catalog, self.path, self.identity.dim)
            self._vectors, self._vectors_generation = rebuilt, self.catalog.generation()
        return report

    # --- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.catalog.count_files()

    @property
    def count(self) -> int:
        """How many files are indexed (a video counts once, whatever its frames)."""
        return self.catalog.count_files()

    def info(self) -> IndexInfo:
        meta = self.catalog
        return IndexInfo(
            path=str(self.path),
            count=meta.count_files(),
            model=self.identity.model,
            pretrained=self.identity.pretrained,
            weights_sha256=self.identity.weights_sha256,
            dim=self.identity.dim,
            image_size=self.identity.image_size,
            index_type=meta.get_meta("index_type", "flat"),
            roots=tuple(sorted(meta.roots().values())),
            errors=len(meta.errors()),
            schema_version=int(meta.get_meta("schema_version", SCHEMA_VERSION)),
            created=float(meta.get_meta("created", 0.0)),
            text_sha256=self.identity.text_sha256,
        )

    def errors(self) -> list[ErrorRecord]:
        """Files that could not be indexed, with the reason, by path."""
        return self.catalog.errors()

    @cached_property
    def styles(self) -> IndexStyles:
        """Style labels: train a head, relabel, count (see :class:`~clipsearch.IndexStyles`)."""
        from clipsearch.index.styles import IndexStyles

        return IndexStyles(self)

    def classify(
        self, image: str | os.PathLike[str], labels: str | Sequence[str]
    ) -> list[Prediction]:
        """Zero-shot classify an image among any labels with the index's model.

        Args:
            image: an image file; an indexed, unchanged file uses its stored vector.
            labels: two or more labels, as a sequence or ``"cat,dog,car"``.

        Returns:
            Every label with its softmax probability (they sum to 1), most probable first.

        Raises:
            QueryError: the image cannot be read.
            StyleError: the labels are invalid.
        """
        from clipsearch.style.labels import classify_vector, parse_labels

        names = parse_labels(labels)
        return classify_vector(self.encoder, self._image_vector(str(image))[0], names)

    def embed_text(self, text: str) -> np.ndarray:
        """The unit vector of a text, as the index's model sees it."""
        return self.query_vector(Query.text(text))

    def embed_image(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The unit vector of an image file, as the index's model sees it."""
        return self.query_vector(Query.image(str(path)))

    def query_vector(self, query: Query) -> np.ndarray:
        """The combined, normalized vector of a query's terms."""
        vectors = np.zeros((len(query.terms), self.identity.dim), dtype=np.float32)
        text_pos = [i for i, t in enumerate(query.terms) if t.kind == "text"]
        if text_pos:
            encoded = self.text_encoder.encode_texts([query.terms[i].value for i in text_pos])
            vectors[text_pos] = encoded
        for i, term in enumerate(query.terms):
            if term.kind == "image":
                vectors[i] = self._image_vector(term.value)[0]
        return combine(query.terms, vectors)

    def _image_vector(self, path: str, at: float | None = None) -> tuple[np.ndarray, list[int]]:
        """An image's vector, from the catalog when the file is indexed and unchanged, and the
        ids of the file in that case (every frame of a video). A video gives its frame shown
        at ``at`` seconds (default: its first)."""
        from clipsearch.media.files import load_image
        from clipsearch.media.video import is_video, read_video_frame

        p = Path(path).expanduser()
        try:
            if not p.exists():
                raise QueryError(f"query image {path}: no such file")
            if p.is_dir():
                raise QueryError(f"query image {path}: is a folder, not an image")
            resolved = str(p.resolve())
            st = p.stat()
        except (OSError, RuntimeError) as e:  # permission denied, symlink loop, name too long
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise QueryError(f"query image {path}: {reason}") from e
        stored = self.catalog.find_path(resolved)
        if stored is not None and (st.st_size, st.st_mtime_ns) == (stored.size, stored.mtime_ns):
            frames = self.catalog.frames(stored.id)
            best = stored.id
            if frames:  # the frame taken nearest to the time asked for
                best = min(frames, key=lambda f: (abs(f[1] - (at or 0.0)), f[1]))[0]
            vec = self.catalog.vector(best)
            if vec is not None:
                return vec, [i for i, _ in frames] or [stored.id]
        try:
            if is_video(resolved):
                img = read_video_frame(resolved, at or 0.0, self.identity.image_size)
            else:
                img = load_image(p)
        except ImageReadError as e:
            raise QueryError(f"query image {path}: {e.reason}") from e
        return self._query_image_encoder().encode_images([img])[0], []

    def search(
        self,
        query: str | Query | None = None,
        *,
        k: int = 10,
        plus: Sequence[str] = (),
        minus: Sequence[str] = (),
        min_score: float | None = None,
        path_prefix: str | None = None,
        styles: Sequence[str] | None = None,
        after: DateLike | None = None,
        before: DateLike | None = None,
        camera: str | None = None,
        near: str | tuple[float, ...] | None = None,
    ) -> list[SearchResult]:
        """Rank indexed images by cosine similarity to a query.

        Args:
            query: a term string (``"beach"``, ``"2:beach"``, ``"@photo.jpg"``) or a
                :class:`Query`.
            k: how many results at most.
            plus: more terms to add to the query.
            minus: terms to subtract from it.
            min_score: drop results below this cosine similarity.
            path_prefix: only images whose absolute path starts with this.
            styles: only images with one of these style labels.
            after: only photos taken at or after the start of this date (``2023``,
                ``2023-06``, ``2023-06-15``, an ISO datetime; see :mod:`clipsearch.index.filters`).
            before: only photos taken before the start of this date.
            camera: only photos whose camera make and model hold this text (any case).
            near: only photos taken within ``"LAT,LON[,KM]"`` (default 10 km).

        Raises:
            QueryError: the query or an option is invalid.
            EmptyIndexError: nothing is indexed yet.
        """
        k = check_k(k)
        q = Query.parse(query, plus, minus)
        filters = {"min_score": min_score, "path_prefix": path_prefix, "styles": styles}
        filters |= {"after": after, "before": before, "camera": camera, "near": near}
        if len(q.terms) == 1 and q.terms[0].kind == "image":
            return self.similar(q.terms[0].value, k=k, **filters)
        self._check_not_empty()
        return self.search_vector(self.query_vector(q), k=k, **filters)

    def similar(
        self,
        image: str | os.PathLike[str] | int,
        *,
        at: float | None = None,
        k: int = 10,
        min_score: float | None = None,
        path_prefix: str | None = None,
        styles: Sequence[str] | None = None,
        after: DateLike | None = None,
        before: DateLike | None = None,
        camera: str | None = None,
        near: str | tuple[float, ...] | None = None,
    ) -> list[SearchResult]:
        """Images that look like a given one (a file path or an indexed id), never itself.

        A video is given by its path and ``at`` (the frame shown at that many seconds; default
        its first), or by the id of one of its frames; its other frames are left out too.
        The filters (``min_score``, ``path_prefix``, ``styles``, ``after``, ``before``,
        ``camera``, ``near``) are those of :meth:`search`.
        """
        k = check_k(k)
        self._check_not_empty()
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            vec = self.catalog.vector(int(image))
            if vec is None:
                raise QueryError(f"no image with id {image} in this index")
            own = self._same_file([int(image)])
        else:
            vec, own = self._image_vector(str(image), at)
        return self.search_vector(
            vec,
            k=k,
            min_score=min_score,
            path_prefix=path_prefix,
            styles=styles,
            after=after,
            before=before,
            camera=camera,
            near=near,
            exclude=own,
        )

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        min_score: float | None = None,
        path_prefix: str | None = None,
        styles: Sequence[str] | None = None,
        after: DateLike | None = None,
        before: DateLike | None = None,
        camera: str | None = None,
        near: str | tuple[float, ...] | None = None,
        exclude: Sequence[int] = (),
    ) -> list[SearchResult]:
        """Rank indexed images against a unit vector (see :meth:`search`). Each file comes
        once: a video at its best frame."""
        k = check_k(k)
        where = Filters.parse(after=after, before=before, camera=camera, near=near)
        allowed = self._allowed_ids(path_prefix, styles, where)
        if allowed is not None and len(allowed) == 0:
            return []
        total = len(allowed) if allowed is not None else self.catalog.count()
        # Ask for a few extra so excluded ids and ties at the cut-off don't shorten the list,
        # and for more while a video's frames crowd out other files.
        want = k + len(exclude) + 8
        while True:
            scores, ids = self.vectors.search(vector[None, :], want, allowed)
            hits = rank(scores[0], ids[0], want, min_score=min_score, exclude=exclude)
            out = self._best_per_file(hits, k)
            exhausted = int((ids[0] >= 0).sum()) < want or want >= total
            if len(out) >= k or exhausted:
                return out
            want *= 4

    def _best_per_file(self, hits: list[tuple[int, float]], k: int) -> list[SearchResult]:
        """The first k files of ranked hits, each at its best hit."""
        records = self.catalog.images([i for i, _ in hits])
        out: list[SearchResult] = []
        seen: set[int] = set()
        for image_id, score in hits:
            rec = records.get(image_id)
            if rec is None or rec.file_id in seen:  # removed by a concurrent writer, or a
                continue  # later frame of a video already listed
            seen.add(rec.file_id)
            out.append(
                SearchResult(
                    id=image_id,
                    path=rec.path,
                    score=score,
                    style=rec.style,
                    style_score=rec.style_score,
                    width=rec.width,
                    height=rec.height,
                    frame_time=rec.frame_time,
                    **meta_fields(rec.meta),
                )
            )
            if len(out) == k:
                break
        return out

    def _same_file(self, ids: Sequence[int]) -> list[int]:
        """``ids`` and the ids of every other frame of the videos they belong to."""
        out = set(ids)
        for rec in self.catalog.images(list(ids)).values():
            if rec.frame_time is not None:
                out.update(i for i, _ in self.catalog.frames(rec.file_id))
        return sorted(out)

    def duplicates(
        self, threshold: float = DEFAULT_THRESHOLD, *, path_prefix: str | None = None
    ) -> list[DuplicateGroup]:
        """Groups of near-identical images, largest group first; nothing is deleted.

        Files with the same bytes are grouped, and so are images whose cosine similarity
        reaches ``threshold`` (re-encodes, resizes, crops, small edits, bursts). Each group
        lists the image to keep first: the largest resolution, then the oldest photo (by
        its date taken, else its modification time). The pairs come from the vector index:
        exact for ``flat``, with the recall of the index type for the others.

        Args:
            threshold: the least cosine similarity, in (0, 1].
            path_prefix: only images whose absolute path starts with this.

        Returns:
            The groups; empty for an empty index or a prefix that matches nothing.

        Raises:
            QueryError: the threshold is not in (0, 1], or the prefix lies outside the
                indexed folders.
        """
        threshold = check_threshold(threshold)
        allowed = self._allowed_ids(
            path_prefix, stills=self.catalog.count_files() < self.catalog.count()
        )
        if allowed is not None and len(allowed) < 2:
            return []
        if self.catalog.count() < 2:
            return []
        return find_duplicates(self.catalog, self.vectors, threshold, allowed)

    def _allowed_ids(
        self,
        path_prefix: str | None,
        styles: Sequence[str] | None = None,
        where: Filters | None = None,
        stills: bool = False,
    ) -> np.ndarray | None:
        """The ids the catalog's filters let through, or None where there is no filter.
        ``stills`` lets still images through, no video frames.

        Raises:
            QueryError: the prefix lies outside the indexed folders.
        """
        active = where is not None and where.active
        if path_prefix is None and styles is None and not active and not stills:
            return None
        prefix = path_filter(path_prefix, self.catalog.roots().values()) if path_prefix else None
        meta = where.catalog_args() if where is not None else {}
        return self.catalog.ids_matching(path_prefix=prefix, styles=styles, stills=stills, **meta)

    def _check_not_empty(self) -> None:
        if self.catalog.count() == 0:
            raise EmptyIndexError(
                f"index {self.path} is empty; add images with `clipsearch index FOLDER`"
            )

    # --- queries from outside: images by id or as pixels, never a path ----------------------

    def embed_pixels(self, image: Image.Image | bytes, name: str = "image") -> np.ndarray:
        """The unit vector of an image given as pixels or as an encoded file's bytes (an
        upload), as the index's model sees it.

        Raises:
            QueryError: the bytes are not a readable image (``name`` says which).
        """
        from clipsearch.media.files import decode_image

        if isinstance(image, bytes):
            if not image:
                raise QueryError(f"query image {name} is empty")
            try:
                image = decode_image(image, name, draft_size=self.identity.image_size)
            except ImageReadError as e:
                raise QueryError(f"query image {name}: {e.reason}") from e
        elif image.mode != "RGB":
            image = image.convert("RGB")
        return self.image_encoder.encode_images([image])[0]

    def search_indexed(
        self,
        query: str | Query | None = None,
        *,
        plus: Sequence[str] = (),
        minus: Sequence[str] = (),
        image: Image.Image | bytes | None = None,
        image_name: str = "image",
        k: int = 10,
        min_score: float | None = None,
        path_prefix: str | None = None,
        styles: Sequence[str] | None = None,
        after: DateLike | None = None,
        before: DateLike | None = None,
        camera: str | None = None,
        near: str | tuple[float, ...] | None = None,
    ) -> list[SearchResult]:
        """Like :meth:`search`, for a query from outside (the web API) that must never reach
        the file system: an image term names an indexed image by its id (``@42``,
        ``0.5:@42``), never a file, and ``image`` puts a picture given as pixels or bytes (an
        upload) first, with weight 1. Indexed images the query is made of are left out of the
        results.

        Args:
            query: the main term, or a :class:`Query` whose image terms are ids.
            plus: more terms to add.
            minus: terms to subtract.
            image: a PIL image or an image file's bytes (see :meth:`embed_pixels`).
            image_name: what error messages call ``image``.
            k: how many results at most.
            min_score: drop results below this cosine similarity.
            path_prefix: only images whose absolute path starts with this.
            styles: only images with one of these style labels.
            after: only photos taken at or after the start of this date (``2023``,
                ``2023-06``, ``2023-06-15``, an ISO datetime; see :mod:`clipsearch.index.filters`).
            before: only photos taken before the start of this date.
            camera: only photos whose camera make and model hold this text (any case).
            near: only photos taken within ``"LAT,LON[,KM]"`` (default 10 km).

        Raises:
            QueryError: a term is invalid or names no indexed image, the query has no
                positive term, or ``image`` cannot be decoded.
            EmptyIndexError: nothing is indexed yet.
        """
        k = check_k(k)
        terms = gather_terms(query, plus, minus)
        if image is None:
            require_positive(terms, "some text or an indexed image (@ID)")
        self._check_not_empty()
        ids = {i: t.indexed_id() for i, t in enumerate(terms) if t.kind == "image"}
        vectors = np.zeros((len(terms), self.identity.dim), dtype=np.float32)
        for i, image_id in ids.items():
            vec = self.catalog.vector(image_id)
            if vec is None:
                raise QueryError(f"no image with id {terms[i].value} in this index")
            vectors[i] = vec
        filters = {"min_score": min_score, "path_prefix": path_prefix, "styles": styles}
        filters |= {"after": after, "before": before, "camera": camera, "near": near}
        if image is None and len(terms) == 1 and ids:
            return self.similar(ids[0], k=k, **filters)
        text = [i for i, t in enumerate(terms) if t.kind == "text"]
        if text:
            vectors[text] = self.text_encoder.encode_texts([terms[i].value for i in text])
        own = self._same_file([image_id for i, image_id in ids.items() if not terms[i].negative])
        if image is not None:
            terms.insert(0, Term("image", image_name))
            vectors = np.vstack([self.embed_pixels(image, image_name)[None, :], vectors])
        return self.search_vector(combine(terms, vectors), k=k, exclude=own, **filters)


def meta_fields(meta: PhotoMeta) -> dict[str, Any]:
    """The date, camera and place of a :class:`SearchResult` (``taken`` as ISO 8601)."""
    taken = None
    if meta.taken is not None:
        offset = meta.offset_min
        tz = timezone(timedelta(minutes=offset)) if offset is not None else None
        try:
            when = datetime.fromtimestamp(meta.taken, tz)
            taken = (when if tz else when.astimezone()).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            taken = None
    return {
        "taken": taken,
        "taken_source": meta.taken_source if taken else None,
        "camera": meta.camera,
        "lat": meta.lat,
        "lon": meta.lon,
    }


def _unfinished(folder: Path) -> bool:
    """True for a catalog whose creation was interrupted before the model was recorded."""
    catalog = Catalog.open(folder / CATALOG_FILE)
    try:
        return catalog.get_meta("model") is None and catalog.count() == 0
    finally:
        catalog.close()


def _adopt_bundled_style_head(spec: ModelSpec, folder: Path) -> None:
    """A model folder may ship a trained style head in ``style/`` (the demo model does): a new
    index of that model starts with it instead of zero-shot labels."""
    import shutil

    from clipsearch.models.identity import weights_file
    from clipsearch.style.head import HEAD_META, STYLE_DIR

    weights = weights_file(spec)
    if weights is None:
        return
    bundled = Path(weights).parent / STYLE_DIR
    if (bundled / HEAD_META).is_file() and not (folder / STYLE_DIR).exists():
        shutil.copytree(bundled, folder / STYLE_DIR)
