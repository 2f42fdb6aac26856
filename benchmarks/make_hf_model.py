"""A full-size multilingual open_clip model with random weights, as a ``local-dir:`` folder:
the shape of ``xlm-roberta-base-ViT-B-32`` (an XLM-R base text tower from Hugging Face
transformers: 12 layers, width 768, and a ViT-B-32 image tower), for timing. Speed does not
depend on the weights, and pretrained ones cannot be downloaded here.

The tokenizer is a SentencePiece-style unigram model (XLM-R's kind) trained with the
``tokenizers`` library to about XLM-R's vocabulary size (250k) on generated text: random words
in Hangul, Cyrillic, Latin and kana, Zipf-distributed. The text tower's embedding table has a
row per token, as XLM-R's has, so the checkpoint is the real size (about 1.5 GB in fp32).

    python benchmarks/make_hf_model.py /tmp/clipsearch-bench/xlmr-base-vit-b-32
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # XLM-R's ids 0-4
ALPHABETS = {
    "hangul": ([chr(c) for c in range(0xAC00, 0xD7A4, 7)], 1, 4),
    "cyrillic": (list("абвгдеёжзийклмнопрстуфхцчшщъыьэюя"), 3, 10),
    "latin": (list("abcdefghijklmnopqrstuvwxyz"), 3, 10),
    "kana": ([chr(c) for c in range(0x3041, 0x3097)], 2, 6),
}
MARKER = ".complete"


def corpus(lines: int, words: int = 100_000, seed: int = 0) -> Iterator[str]:
    """``lines`` sentences of 5-15 random words, the scripts in turn; half of the words drawn
    by a Zipf-like law (a few frequent words), half uniformly."""
    rng = random.Random(seed)
    lexicons = [
        ["".join(rng.choice(alpha) for _ in range(rng.randint(lo, hi))) for _ in range(words)]
        for alpha, lo, hi in ALPHABETS.values()
    ]
    for i in range(lines):
        lex = lexicons[i % len(lexicons)]
        sentence = []
        for _ in range(rng.randint(5, 15)):
            if rng.random() < 0.5:
                sentence.append(lex[min(int(rng.paretovariate(0.7)) - 1, len(lex) - 1)])
            else:
                sentence.append(rng.choice(lex))
        yield " ".join(sentence)


def save_tokenizer(folder: Path, vocab_size: int, lines: int) -> int:
    """Train the unigram tokenizer and save it as a fast tokenizer; returns its size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus(lines), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    s, pad, e, unk, mask = SPECIAL_TOKENS
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=s,
        cls_token=s,
        eos_token=e,
        sep_token=e,
        pad_token=pad,
        unk_token=unk,
        mask_token=mask,
        model_max_length=512,
    )
    fast.save_pretrained(str(folder))
    return len(fast)


def make_hf_model(folder: Path, vocab_size: int = 250_000, lines: int = 500_000) -> Path:
    """Write the model folder (once: a finished folder is kept)."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig

    if (folder / MARKER).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    vocab = save_tokenizer(folder, vocab_size, lines)
    print(f"tokenizer: {vocab:,} tokens in {time.perf_counter() - t:.0f}s", flush=True)
    # XLM-R base: transformers' defaults are BERT base's (12 layers, width 768, 12 heads);
    # XLM-R's own positions (514) and special ids.
    XLMRobertaConfig(
        vocab_size=vocab,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    ).save_pretrained(str(folder))
    model_cfg = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    model_cfg["text_cfg"].update(hf_model_name=".", hf_tokenizer_name=".")
    build = {**model_cfg["text_cfg"], "hf_model_name": str(folder), "hf_model_pretrained": False}
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(**{**model_cfg, "text_cfg": build})
    preprocess = open_clip.get_model_preprocess_cfg(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights = folder / "open_clip_model.safetensors"
    save_file(state, str(weights.with_suffix(".tmp")))
    weights.with_suffix(".tmp").rename(weights)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    (folder / MARKER).touch()
    params = sum(v.numel() for v in state.values())
    print(f"model: {params / 1e6:.0f}M parameters in {time.perf_counter() - t:.0f}s", flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--vocab", type=int, default=250_000, help="tokenizer size to train to")
    ap.add_argument("--lines", type=int, default=500_000, help="generated training sentences")
    args = ap.parse_args()
    make_hf_model(args.folder, args.vocab, args.lines)


if __name__ == "__main__":
    main()
