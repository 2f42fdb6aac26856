"""Encoding on one or more devices, with JPEGs decoded in batches where the model runs.

With ``decode="device"`` the pipeline's worker threads only read and hash a JPEG (into pinned
memory when the device is CUDA) and check its header; a :class:`DeviceStage` then decodes
each batch with :func:`clipsearch.media.batchdecode.decode_jpegs` (nvJPEG on CUDA), resizes
and normalises it there (:class:`clipsearch.models.batchpre.TensorPreprocess`) and encodes it.
Files the batched decoder refuses take the PIL path one by one; a file that PIL cannot read
either becomes that file's error. Several devices (``devices=("cuda:0", "cuda:1")``) each get
a replica of the model and a contiguous share of every batch; the shares are merged back in
order. Out of memory halves the images per model call on that device, from then on.

On CUDA each thread works on a stream of its own, so that one batch decodes while the one
before it encodes (:func:`pipelined` keeps two batches in flight); elsewhere the streams
are absent and the same code runs, which is how the tests exercise it on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from clipsearch.errors import ClipsearchError, ImageReadError, ModelLoadError
from clipsearch.media.batchdecode import decode_jpegs
from clipsearch.media.files import decode_image_sized
from clipsearch.models.batchpre import TensorPreprocess
from clipsearch.models.runtime import BATCH_SIZES

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder

DECODES = ("auto", "cpu", "device")
# What one image in flight may hold on the device besides the model's own activations: a
# decoded 24-megapixel photo (uint8 RGB). Larger photos are caught by the halving on OOM.
DECODED_PHOTO_BYTES = 24_000_000 * 3
MAX_BATCH = 512  # also bounds the files read ahead in host memory and one transaction's size
IN_FLIGHT = 2  # batches on the devices at once (see pipelined): each holds its decoded images


class RawJpeg(NamedTuple):
    """A JPEG read but not decoded: its bytes as a uint8 tensor and its EXIF orientation."""

    data: Any
    orientation: int


class Item(Protocol):
    """What the stage reads and sets on a prepared file (``pipeline.Prepared``)."""

    raw: RawJpeg | None
    pixels: Any
    vector: np.ndarray | None
    error: str | None
    cand: Any


def parse_devices(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"0,1"`` -> ``("cuda:0", "cuda:1")``; ``cpu`` and ``cuda:N`` pass as they are.

    Raises:
        ClipsearchError: an entry is neither a GPU number, ``cuda:N`` nor ``cpu``.
    """
    if not text:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for part in (p.strip() for p in parts):
        if part.isdigit():
            out.append(f"cuda:{int(part)}")
        elif part == "cpu" or (part.startswith("cuda:") and part[5:].isdigit()):
            out.append(part)
        else:
            raise ClipsearchError(
                f"unknown device {part!r} in --devices; give GPU numbers such as 0,1"
            )
    return tuple(out)


def resolve_decode(decode: str, device: str) -> str:
    """``auto`` decodes on the device when it is a CUDA GPU (nvJPEG), else with PIL."""
    if decode not in DECODES:
        raise ClipsearchError(f"unknown decode {decode!r}; choose one of {', '.join(DECODES)}")
    if decode == "auto":
        return "device" if device.startswith("cuda") else "cpu"
    return decode


def memory_batch_size(free_bytes: int, per_image_bytes: int, *, keep_free: float = 0.25) -> int:
    """Images per model call that fit in ``free_bytes`` of device memory, leaving a share of
    it free: the largest power of two that fits, between 1 and ``MAX_BATCH``."""
    fits = int(free_bytes * (1.0 - keep_free)) // max(1, per_image_bytes)
    if fits < 1:
        return 1
    return min(MAX_BATCH, 1 << (fits.bit_length() - 1))


def is_out_of_memory(e: BaseException) -> bool:
    """Whether an exception is the device (or the host) running out of memory."""
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def replicate(encoder: Encoder, device: str) -> Encoder:
    """A copy of the encoder, its model moved to ``device``."""
    from clipsearch.models.encoder import Encoder

    model = copy.deepcopy(encoder.model).to(device)
    return Encoder(
        model,
        encoder.preprocess,
        encoder.tokenizer,
        encoder.identity,
        device,
        encoder.precision,
        encoder.towers,
    )


def _same_device(a: str, b: str) -> bool:
    return a == b or {a, b} == {"cuda", "cuda:0"}


class DeviceWorker:
    """One device's share of each batch: decode, preprocess and encode, halving on OOM.

    Args:
        encoder: the model on this device.
        draft: decode the PIL fallbacks as DCT drafts (as the pipeline's ``draft``).
    """

    def __init__(self, encoder: Encoder, draft: bool = True):
        self.encoder = encoder
        self.device = encoder.device
        self.pre = TensorPreprocess(encoder.preprocess)
        self.draft = draft
        self.limit: int | None = None  # images per model call since an OOM; None: no limit
        self._local = threading.local()

    def run(self, items: Sequence[Item]) -> None:
        """Give each item with pixels or raw bytes its vector, or its error."""
        todo = [p for p in items if p.error is None and (p.raw is not None or p.pixels is not None)]
        start = 0
        while start < len(todo):
            size = min(self.limit or len(todo), len(todo) - start)
            chunk = todo[start : start + size]
            try:
                with self._stream():
                    self._encode(chunk)
            except Exception as e:
                if size == 1 or not is_out_of_memory(e):
                    raise
                self.limit = max(1, size // 2)
                self._release()
                continue
            start += size

    def batch_size(self) -> int:
        """Images per call: from free memory on CUDA, else what suits the device."""
        if not self.device.startswith("cuda"):
            return BATCH_SIZES.get(self.device, 32)
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        per_image = DECODED_PHOTO_BYTES + self._activation_bytes()
        return memory_batch_size(free // IN_FLIGHT, per_image)

    def _encode(self, chunk: Sequence[Item]) -> None:
        """Decode, preprocess and encode one chunk; fallbacks and file errors on the way."""
        raws = [p for p in chunk if p.raw is not None]
        decoded = decode_jpegs(
            [p.raw.data for p in raws],  # type: ignore[union-attr]
            [p.raw.orientation for p in raws],  # type: ignore[union-attr]
            self.device,
        )
        ok = [(p, img) for p, img in zip(raws, decoded, strict=True) if img is not None]
        batch = self.pre([img for _, img in ok]) if ok else []
        done = {id(p): x for (p, _), x in zip(ok, batch, strict=True)}
        del decoded, ok  # the full-size pictures: free before the model runs
        rows, pixels = [], []
        for p in chunk:
            if p.raw is not None and id(p) not in done:
                p.pixels = self._fallback(p)  # refused by the batched decoder
            if p.error is not None:
                continue
            rows.append(p)
            pixels.append(done[id(p)] if id(p) in done else p.pixels.to(self.device))
        if not rows:
            return
        import torch

        vectors = self.encoder.encode_pixels(torch.stack(pixels))
        for p, vec in zip(rows, vectors, strict=True):
            p.vector = np.ascontiguousarray(vec)
            p.pixels = p.raw = None

    def _fallback(self, p: Item) -> Any:
        """The PIL path for one file: its preprocessed tensor, or None with its error set."""
        data = p.raw.data.numpy().tobytes()  # type: ignore[union-attr]
        draft = 2 * self.encoder.image_size if self.draft else None
        try:
            img, _ = decode_image_sized(data, p.cand.found.path, draft_size=draft)
            return self.encoder.preprocess(img)
        except ImageReadError as e:
            p.error = e.reason
        except Exception as e:  # a preprocessing bug must not abort hours of indexing
            p.error = f"cannot preprocess image: {type(e).__name__}: {e}"
        p.raw = None
        return None

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        """A CUDA stream of this thread's own (see the module's notes); nothing elsewhere."""
        if not self.device.startswith("cuda"):
            yield
            return
        import torch

        device = torch.device(self.device)
        if getattr(self._local, "stream", None) is None:
            self._local.stream = torch.cuda.Stream(device=device)
        with torch.cuda.device(device), torch.cuda.stream(self._local.stream):
            yield  # the vectors' copy to the host waits for the stream's work

    def _release(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _activation_bytes(self) -> int:
        """Device memory per image of one model call, measured on a small batch (CUDA)."""
        import torch

        device = torch.device(self.device)
        size, n = self.encoder.image_size, 8
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        self.encoder.encode_pixels(torch.zeros(n, 3, size, size, device=device))
        peak = torch.cuda.max_memory_allocated(device)
        return max(1, (peak - before) // n)


class DeviceStage:
    """Decode and encode batches on one or more devices, as a step of the indexer.

    Args:
        encoder: the index's loaded model.
        devices: where to run; empty means the encoder's own device.
        draft: as the pipeline's ``draft``.
    """

    def __init__(self, encoder: Encoder, devices: Sequence[str] = (), draft: bool = True):
        devices = tuple(devices) or (encoder.device,)
        _check_devices(devices)
        encoders: list[Encoder] = []
        for d in devices:  # the loaded model serves its own device; the others get copies
            own = _same_device(encoder.device, d) and encoder not in encoders
            encoders.append(encoder if own else replicate(encoder, d))
        self.workers = [DeviceWorker(e, draft) for e in encoders]
        self.batch_size = len(self.workers) * min(w.batch_size() for w in self.workers)
        self._pool = ThreadPoolExecutor(2 * len(self.workers), thread_name_prefix="device")

    def __call__(self, batch: list[Any]) -> list[Any]:
        """Encode one batch in place: each device takes a contiguous share of it."""
        n = len(self.workers)
        share = -(-len(batch) // n) if batch else 0
        futures = [
            self._pool.submit(w.run, batch[i * share : (i + 1) * share])
            for i, w in enumerate(self.workers)
        ]
        for f in futures:
            f.result()
        return batch

    def close(self) -> None:
        self._pool.shutdown()


def pipelined(
    batches: Iterable[list[Any]],
    stage: Callable[[], Callable[[list[Any]], list[Any]] | None],
    depth: int = IN_FLIGHT,
) -> Iterator[list[Any]]:
    """The batches in order, each through ``stage()`` where it gives one (asked per batch:
    the stage exists once the model has loaded), with up to ``depth`` batches on the
    devices at once, while the caller commits the ones before."""
    pending: deque[Future[list[Any]]] = deque()
    with ThreadPoolExecutor(depth, thread_name_prefix="stage") as ahead:
        for batch in batches:
            run = stage()
            if run is None:
                done: Future[list[Any]] = Future()
                done.set_result(batch)
                pending.append(done)
            else:
                pending.append(ahead.submit(run, batch))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _check_devices(devices: Sequence[str]) -> None:
    cuda = [int(d.split(":")[1]) if ":" in d else 0 for d in devices if d.startswith("cuda")]
    if not cuda:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if max(cuda) >= count:
        raise ModelLoadError(
            f"GPU {max(cuda)} requested but this machine has {count} CUDA GPU(s); "
            f"pass --devices with numbers below {count}"
            if count
            else "GPUs requested with --devices but no CUDA GPU is available; leave it out"
        )
