"""Video indexing speed on a generated 1080p clip, against the loop a user would write.

Generates (once, then reused) a clip of moving shapes at 1920x1080, 30 fps, H.264, whose
textured background pans and changes every 7 seconds (a scene change), then measures in one
process, with one model (random ViT-B-32 weights by default; speed does not depend on them):

* decoding: clipsearch's frame picker (``read_video_frames``: frames in order, a tiny probe
  a few times per interval, only the frames taken converted to RGB at the model's input size)
  against a plain PyAV loop that converts every decoded frame to a full-size RGB picture and
  keeps one per interval;
* end to end: ``ImageIndex.add`` on the clip's folder (hash, decode, preprocess, encode in
  batches, commit, save FAISS) against that plain loop with ``preprocess`` and
  ``encode_image`` one frame at a time.

Figures: frames taken and encoded per second, and minutes of video per minute of indexing.

    python benchmarks/bench_video.py                  # the 1-minute clip
    python benchmarks/bench_video.py --seconds 10     # a short run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    Row,
    machine,
    peak_rss_mib,
    print_table,
    random_weights,
    ratio,
)

WIDTH, HEIGHT, FPS = 1920, 1080, 30
SCENE_SECONDS = 7  # between the interval's points, so that scene changes add frames


def make_clip(path: Path, seconds: int) -> Path:
    """Moving coloured squares over a panning textured background that changes every
    SCENE_SECONDS (texture, so that the bitrate is a camera's rather than a cartoon's)."""
    import av

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.6, 1.0, HEIGHT, dtype=np.float32)[:, None, None]
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        background = None
        shapes = []
        for i in range(seconds * FPS):
            if i % (SCENE_SECONDS * FPS) == 0:
                color = rng.integers(40, 220, 3).astype(np.float32)
                noise = rng.normal(1.0, 0.15, (HEIGHT, WIDTH, 1)).astype(np.float32)
                background = np.clip(ramp * color * noise, 0, 255).astype(np.uint8)
                shapes = [
                    (
                        rng.integers(0, WIDTH - 300),
                        rng.integers(0, HEIGHT - 300),
                        *rng.integers(-12, 12, 2),
                        rng.integers(0, 256, 3),
                    )
                    for _ in range(4)
                ]
            frame = np.roll(background, 4 * i, axis=1)  # a slow pan
            for x, y, dx, dy, c in shapes:
                px = int(x + dx * (i % (SCENE_SECONDS * FPS))) % (WIDTH - 240)
                py = int(y + dy * (i % (SCENE_SECONDS * FPS))) % (HEIGHT - 240)
                frame[py : py + 240, px : px + 240] = c
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def naive(clip: Path, interval: float, encode) -> tuple[int, float]:
    """Every frame decoded to a full-size RGB picture; one per interval kept (and encoded)."""
    import av

    t = time.perf_counter()
    taken, next_time = 0, 0.0
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            img = frame.to_image()
            if frame.time is not None and frame.time >= next_time:
                taken += 1
                next_time += interval
                if encode is not None:
                    encode(img)
    return taken, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of the clip")
    parser.add_argument("--interval", type=float, default=5.0, help="--video-interval")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench-video"))
    args = parser.parse_args()

    import open_clip
    import torch

    from clipsearch import ImageIndex
    from clipsearch.media.video import VideoOptions, read_video_frames

    clip_dir = args.work / f"clip-{args.seconds}s"
    t = time.perf_counter()
    clip = make_clip(clip_dir / "clip.mp4", args.seconds)
    made = time.perf_counter() - t
    weights = random_weights(args.work, args.model)
    print(f"machine: {machine()}")
    print(
        f"clip: {WIDTH}x{HEIGHT}, {FPS} fps, H.264, {args.seconds} s, "
        f"{clip.stat().st_size / 2**20:.1f} MiB (made in {made:.0f} s); model {args.model}, "
        f"interval {args.interval} s"
    )

    # Decoding alone.
    options = VideoOptions(interval=args.interval)
    t = time.perf_counter()
    frames = read_video_frames(str(clip), 224, options).frames
    ours_decode = time.perf_counter() - t
    naive_frames, naive_decode = naive(clip, args.interval, None)

    # End to end.
    model, _, preprocess = open_clip.create_model_and_transforms(
        args.model, pretrained=str(weights)
    )
    model.eval()

    def encode_one(img) -> None:
        with torch.no_grad():
            model.encode_image(preprocess(img).unsqueeze(0))

    encode_one(frames[0][1])  # warm-up
    naive_taken, naive_seconds = naive(clip, args.interval, encode_one)
    folder = args.work / "index"
    shutil.rmtree(folder, ignore_errors=True)
    with ImageIndex.create(folder, args.model, str(weights), device="cpu") as index:
        # The one-off costs (model load, the style labels' text prompts) are paid on a
        # warm-up file before the clock starts, as the naive loop's model is loaded before.
        warm = args.work / "warm"
        warm.mkdir(parents=True, exist_ok=True)
        frames[0][1].save(warm / "warm.png")
        index.add([warm])
        t = time.perf_counter()
        report = index.add([clip_dir], video_interval=args.interval)
        ours_seconds = time.perf_counter() - t
        taken = index.catalog.count() - 1
    assert report.added == 1, report

    def per_min(seconds: float) -> float:
        return args.seconds / seconds  # minutes of video per minute

    rows = [
        Row(
            "decode: frames taken/s (frames taken)",
            f"{len(frames) / ours_decode:.2f} ({len(frames)})",
            f"{naive_frames / naive_decode:.2f} ({naive_frames})",
            ratio(len(frames) / ours_decode, naive_frames / naive_decode),
        ),
        Row(
            "decode: minutes of video per minute",
            f"{per_min(ours_decode):.1f}",
            f"{per_min(naive_decode):.1f}",
            ratio(per_min(ours_decode), per_min(naive_decode)),
        ),
        Row(
            "index end to end: frames/s (decoded + encoded)",
            f"{taken / ours_seconds:.2f} ({taken})",
            f"{naive_taken / naive_seconds:.2f} ({naive_taken})",
            ratio(taken / ours_seconds, naive_taken / naive_seconds),
        ),
        Row(
            "index end to end: minutes of video per minute",
            f"{per_min(ours_seconds):.1f}",
            f"{per_min(naive_seconds):.1f}",
            ratio(per_min(ours_seconds), per_min(naive_seconds)),
            f"{peak_rss_mib():.0f} MiB",
        ),
    ]
    print_table(
        f"{args.seconds} s of 1080p30 H.264, interval {args.interval} s; baseline: every frame "
        "to full-size RGB, one per interval kept, encoded one at a time",
        rows,
    )


if __name__ == "__main__":
    main()
