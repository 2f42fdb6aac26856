"""What a model choice costs on this machine: the English-only default against the two
multilingual open_clip models, at their real sizes.

For the README's "which model for which language": the size of each model, how fast its image
tower indexes and how long its text tower takes for one query, against the default
(ViT-B-16-quickgelu, DFN-2B's architecture) measured in the same run.

* ``xlm-roberta-base-ViT-B-32`` and ``nllb-clip-base`` exactly as open_clip builds them, with
  random weights: pretrained ones cannot be downloaded here, and the cost of a forward pass does
  not depend on the weights. Their Hugging Face text towers are built from local configs with the
  dimensions of ``xlm-roberta-base`` and ``facebook/nllb-200-distilled-600M``
  (transformers' ``XLMRobertaConfig`` and ``M2M100Config``), written under ``--work``.
* Image tower: images/s for batches of 16 pre-processed 224 px pictures, the model cast to
  bf16 as ``clipsearch index`` runs it on a CPU with native bf16 (fp32 elsewhere: ``--fp32``).
* Text tower: one short query, tokenized and encoded in torch with
  :func:`clipsearch.models.runtime.encode_text` (trailing padding skipped), median of
  ``--queries``. The NumPy text path (``bench_search.py``, ``bench_search_hf.py``) is not
  used here, since it does not cover NLLB's tower.

Run: ``python benchmarks/bench_models.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, machine, print_table, ratio  # noqa: E402

DEFAULT = "ViT-B-16-quickgelu"
MULTILINGUAL = ("xlm-roberta-base-ViT-B-32", "nllb-clip-base")
QUERIES = ("a dog on the beach at sunset", "해변에서 노는 강아지", "закат над горами")

# The text towers' Hugging Face configs, with the published models' dimensions.
TOWER_CONFIGS = {
    "xlm-roberta-base": {
        "model_type": "xlm-roberta",
        "architectures": ["XLMRobertaForMaskedLM"],
        "vocab_size": 250002,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "layer_norm_eps": 1e-5,
    },
    "facebook/nllb-200-distilled-600M": {
        "model_type": "m2m_100",
        "architectures": ["M2M100ForConditionalGeneration"],
        "vocab_size": 256206,
        "d_model": 1024,
        "encoder_layers": 12,
        "decoder_layers": 12,
        "encoder_attention_heads": 16,
        "decoder_attention_heads": 16,
        "encoder_ffn_dim": 4096,
        "decoder_ffn_dim": 4096,
        "max_position_embeddings": 1024,
        "scale_embedding": True,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "decoder_start_token_id": 2,
    },
}


def build(name: str, work: Path):
    """open_clip's model ``name`` with random weights; an HF tower from a local config."""
    import open_clip

    cfg = open_clip.get_model_config(name)
    kwargs = {}
    text_cfg = dict(cfg["text_cfg"])
    if "hf_model_name" in text_cfg:
        folder = work / text_cfg["hf_model_name"].replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(TOWER_CONFIGS[text_cfg["hf_model_name"]]))
        text_cfg.update(hf_model_name=str(folder), hf_model_pretrained=False)
        kwargs["text_cfg"] = text_cfg
    model = open_clip.create_model(name, pretrained=None, **kwargs)
    return model.eval(), text_cfg


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def image_rate(model, batches: int, dtype) -> float:
    """Images per second of the image tower, batches of 16 at 224 px."""
    import torch

    pixels = torch.randn(16, 3, 224, 224, dtype=dtype)
    with torch.inference_mode():
        model.encode_image(pixels)  # warm up
        start = time.perf_counter()
        for _ in range(batches):
            model.encode_image(pixels)
        return batches * 16 / (time.perf_counter() - start)


def text_ms(model, tokenize, queries: int) -> float:
    """Median milliseconds to encode one short query in torch."""
    import torch

    from clipsearch.models.runtime import encode_text

    times = []
    with torch.inference_mode():
        encode_text(model, tokenize([QUERIES[0]]))  # warm up
        for i in range(queries):
            tokens = tokenize([QUERIES[i % len(QUERIES)]])
            start = time.perf_counter()
            encode_text(model, tokens)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def clip_tokenizer(context: int):
    """The CLIP BPE: the default's tokenizer, ready without any download."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context)


def stand_in_tokenizer(model, context: int):
    """Token ids for an HF tower whose real tokenizer is not on this machine: random ids of a
    typical query's length (10 tokens with the begin/end tokens), padded as open_clip pads.
    The tower's cost depends on the length only."""
    import torch

    vocab = model.text.config.vocab_size
    pad = model.text.config.pad_token_id

    def tokenize(texts):
        ids = torch.full((len(texts), context), pad, dtype=torch.long)
        for row in range(len(texts)):
            ids[row, 0], ids[row, 9] = 0, 2
            ids[row, 1:9] = torch.randint(3, vocab, (8,))
        return ids

    return tokenize


def measure(name: str, work: Path, args) -> dict[str, float]:
    import torch

    model, text_cfg = build(name, work)
    sizes = {"image": params_m(model.visual), "total": params_m(model)}
    sizes["text"] = sizes["total"] - sizes["image"]
    context = int(text_cfg.get("context_length", 77))
    if "hf_model_name" in text_cfg:
        tokenize = stand_in_tokenizer(model, context)
    else:
        tokenize = clip_tokenizer(context)
    dtype = torch.float32 if args.fp32 else torch.bfloat16
    model.to(dtype=dtype)
    rate = image_rate(model, args.batches, dtype)
    query = text_ms(model, tokenize, args.queries)
    del model
    return {**sizes, "img_s": rate, "text_ms": query}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=4, help="image batches of 16 to time")
    ap.add_argument("--queries", type=int, default=15, help="text queries to time")
    ap.add_argument("--fp32", action="store_true", help="fp32 instead of bf16")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench/models"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}; torch {torch.__version__}, {args.threads} threads")
    base = measure(DEFAULT, args.work, args)
    rows = [
        Row(
            f"{DEFAULT}: parameters (image + text)",
            f"{base['total']:.1f} M ({base['image']:.1f} + {base['text']:.1f})",
        ),
        Row(f"{DEFAULT}: image tower, images/s", f"{base['img_s']:.2f}"),
        Row(f"{DEFAULT}: text query, ms", f"{base['text_ms']:.1f}"),
    ]
    for name in MULTILINGUAL:
        m = measure(name, args.work, args)
        rows += [
            Row(
                f"{name}: parameters (image + text)",
                f"{m['total']:.1f} M ({m['image']:.1f} + {m['text']:.1f})",
                f"{base['total']:.1f} M",
            ),
            Row(
                f"{name}: image tower, images/s",
                f"{m['img_s']:.2f}",
                f"{base['img_s']:.2f}",
                ratio(m["img_s"], base["img_s"]),
            ),
            Row(
                f"{name}: text query, ms",
                f"{m['text_ms']:.1f}",
                f"{base['text_ms']:.1f}",
                ratio(m["text_ms"], base["text_ms"], higher_is_better=False),
            ),
        ]
    precision = "fp32" if args.fp32 else "bf16"
    print_table(f"Model cost, random weights at real size, {precision} (baseline: {DEFAULT})", rows)


if __name__ == "__main__":
    main()
