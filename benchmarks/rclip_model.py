"""One random-weight ViT-B-32-256 for both clipsearch and rclip (bench_rclip.py's model).

rclip 3.3 runs ViT-B-32-256 (datacomp_s34b_b86k) as two ONNX files it downloads from the
Hugging Face repo ``yurijmikhalevich/rclip-models`` into ``$RCLIP_DATADIR`` (default
``~/.local/share/rclip``)::

    ViT-B-32-256-datacomp_s34b_b86k/visual.onnx    "input" float32 (N, 3, 256, 256) -> "output"
    ViT-B-32-256-datacomp_s34b_b86k/textual.onnx   "input" int64 (N, 77) -> "output"
    tokenizer/bpe_simple_vocab_16e6.txt.gz         open_clip's BPE vocabulary

Each has one output, the embedding (N, 512) float32, not normalised: rclip normalises it
itself. rclip's published models are fp32 exports of open_clip (opset 18, batch axis dynamic;
no quantised model, and no separate indexing model off macOS, where Core ML runs the image
tower). When all three files are there rclip never goes to the network.

Here the same open_clip model, random weights from a fixed seed, is saved once as a
safetensors checkpoint (what clipsearch loads with ``--model ViT-B-32-256 --pretrained FILE``)
and exported the same way into that layout, so both tools encode with the same weights and the
comparison measures the tools, not the models. Speed does not depend on the weights. Nothing of
rclip's is here: only the file and tensor names it looks for.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from _common import random_weights  # benchmarks/ is on sys.path: bench_rclip.py runs this

MODEL = "ViT-B-32-256"
RCLIP_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
RCLIP_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"


def save_weights(work: Path) -> Path:
    """The random weights of :data:`MODEL` (``torch.manual_seed(0)``), made once."""
    return random_weights(work, MODEL)


def export_onnx(weights: Path, models: Path) -> Path:
    """``models``/ViT-B-32-256-datacomp_s34b_b86k/{visual,textual}.onnx and the vocabulary,
    exported once from ``weights``; returns ``models``, the folder to link into a datadir."""
    subdir = models / RCLIP_SUBDIR
    visual, textual = subdir / "visual.onnx", subdir / "textual.onnx"
    vocab = models / RCLIP_VOCAB
    if visual.exists() and textual.exists() and vocab.exists():
        return models
    import open_clip
    import torch

    model = open_clip.create_model(MODEL, pretrained=str(weights)).eval()

    class Tower(torch.nn.Module):
        def __init__(self, encode) -> None:  # noqa: ANN001
            super().__init__()
            self.model, self.encode = model, encode

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encode(x)  # not normalised: rclip normalises the output itself

    subdir.mkdir(parents=True, exist_ok=True)
    size = model.visual.image_size[0]
    examples = {
        visual: (Tower(model.encode_image), torch.randn(2, 3, size, size)),
        textual: (Tower(model.encode_text), open_clip.tokenize(["a dog", "a cat on a mat"])),
    }
    # Gradients stay on: in inference mode torch's attention takes a fused kernel that the
    # ONNX exporter has no symbol for.
    for path, (tower, x) in examples.items():
        tmp = path.with_suffix(".tmp")
        with warnings.catch_warnings():  # the text tower's argmax gather: never negative
            warnings.filterwarnings("ignore", "Exporting aten::index", UserWarning)
            torch.onnx.export(
                tower, (x,), str(tmp), input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=18, dynamo=False,
            )  # fmt: skip
        os.replace(tmp, path)
    vocab.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", vocab)
    return models


def rclip_datadir(models: Path, datadir: Path) -> Path:
    """A new, empty rclip data folder (its database goes here) that finds the exported model
    through symbolic links, for ``RCLIP_DATADIR``."""
    datadir.mkdir(parents=True, exist_ok=True)
    (datadir / RCLIP_SUBDIR).symlink_to(models / RCLIP_SUBDIR)
    (datadir / "tokenizer").symlink_to(models / "tokenizer")
    return datadir
