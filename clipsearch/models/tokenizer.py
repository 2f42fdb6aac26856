"""CLIP's byte-level BPE tokenizer in plain Python and NumPy, without torch.

It gives the token ids that open_clip's default tokenizer (``SimpleTokenizer``, the one of
OpenAI's CLIP) gives, for the fast text-query path of :mod:`clipsearch.models.texttower`:

1. clean: ``ftfy.fix_text``, HTML entities unescaped twice, outer whitespace stripped, runs of
   whitespace made one space, lower-cased;
2. split into pieces: the two special tokens, English contractions (``'s``, ``'ll``, ...),
   runs of letters, single digits, and runs of anything else that is not whitespace;
3. each piece's UTF-8 bytes spelled with one printable character per byte, and the last one
   marked as a word end (``</w>``);
4. symbol pairs merged, the pair that comes first in the merge list each time, until no pair
   of the piece is in the list;
5. ``<start_of_text>`` + ids + ``<end_of_text>``, cut to the context length with
   ``<end_of_text>`` kept last, padded with 0.

The merge list is the one open_clip ships (``bpe_simple_vocab_16e6.txt.gz``), read from its
package folder without importing open_clip (which would import torch).
"""

from __future__ import annotations

import functools
import html
import importlib.util
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # merges in use: the vocabulary is 2 x 256 bytes + merges + 2 = 49408
SOT = "<start_of_text>"
EOT = "<end_of_text>"
WORD_END = "</w>"
DEFAULT_CONTEXT_LENGTH = 77
WORD_CACHE_SIZE = 100_000  # pieces whose ids are remembered


def vocab_path() -> Path:
    """open_clip's merge list, found without executing ``open_clip/__init__``."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{VOCAB_FILE} not found: is open_clip installed?")


def _byte_symbols() -> tuple[dict[int, str], list[str]]:
    """Each byte's one-character spelling, and the symbols in vocabulary order.

    Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand
    for themselves and come first in the vocabulary; the other 68 bytes (space, controls, ...)
    borrow the characters from U+0100 on, in byte order, and come after them.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in spelling]
    for n, b in enumerate(others):
        spelling[b] = chr(0x100 + n)
    order = [spelling[b] for b in printable + others]
    return spelling, order


@functools.cache
def _tables() -> tuple[dict[str, int], dict[str, int], tuple[str, ...]]:
    """(merge ranks keyed by ``"left right"``, symbol -> id, byte spellings)."""
    spelling, order = _byte_symbols()
    merges = read_merges(vocab_path())
    ids: dict[str, int] = {}
    for symbol in order:
        ids[symbol] = len(ids)
    for symbol in order:
        ids[symbol + WORD_END] = len(ids)
    for n, merge in enumerate(merges):
        ids[merge.replace(" ", "")] = 2 * len(order) + n  # a later duplicate would win
    ids[SOT] = 2 * len(order) + len(merges)
    ids[EOT] = ids[SOT] + 1
    ranks = {merge: n for n, merge in enumerate(merges)}
    return ranks, ids, tuple(spelling[b] for b in range(256))


def read_merges(path: Path) -> list[str]:
    """The merges in use: lines 2 to N_MERGES + 1 of the gzip file. Only as much of the file
    is inflated as they need (a quarter of it)."""
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    text = b""
    with open(path, "rb") as f:
        while text.count(b"\n") <= N_MERGES + 1:
            chunk = f.read(1 << 17)
            if not chunk:
                text += inflate.flush()
                break
            text += inflate.decompress(chunk)
    # Whole lines only: the inflated text may end inside a UTF-8 character.
    lines = b"\n".join(text.split(b"\n")[1 : N_MERGES + 1]).decode("utf-8").split("\n")
    if len(lines) != N_MERGES:
        raise ValueError(f"{path}: {len(lines)} merges, expected {N_MERGES}")
    return lines


@functools.cache
def _splitter() -> regex.Pattern[str]:
    import regex  # \p{L} and \p{N} need it; the stdlib re has no Unicode classes

    specials = f"{regex.escape(SOT)}|{regex.escape(EOT)}"
    contraction = r"'(?:s|t|re|ve|m|ll|d)"
    return regex.compile(
        rf"{specials}|{contraction}|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
    )


def clean(text: str, *, lower: bool = True) -> str:
    """The text as the tokenizer sees it: fixed by ftfy, unescaped, whitespace-normalized and
    lower-cased (open_clip's default cleaning; without ``lower``, its ``whitespace`` one, which
    its Hugging Face tokenizers use)."""
    if not plain_ascii(text):
        import ftfy  # a slow import: only for text it could change

        text = ftfy.fix_text(text)
    text = " ".join(html.unescape(html.unescape(text)).split())
    return text.lower() if lower else text


def plain_ascii(text: str) -> bool:
    """Printable ASCII without ``&``: text that ``ftfy.fix_text`` returns unchanged (a test
    checks this), so ftfy need not be imported for it."""
    return text.isascii() and text.isprintable() and "&" not in text


class ClipTokenizer:
    """Text to CLIP token ids, as open_clip's ``SimpleTokenizer(context_length=...)`` does.

    Args:
        context_length: tokens per text, start and end tokens included (77 for CLIP).
    """

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context length must be at least 2 (got {context_length})")
        self.context_length = context_length
        self._ranks, self._ids, self._bytes = _tables()
        self._words: dict[str, list[int]] = {}
        self.sot_id = self._ids[SOT]
        self.eot_id = self._ids[EOT]

    def encode(self, text: str) -> list[int]:
        """The token ids of a text, without start and end tokens or truncation."""
        out: list[int] = []
        for piece in _splitter().findall(clean(text)):
            ids = self._words.get(piece)
            if ids is None:
                if len(self._words) >= WORD_CACHE_SIZE:  # a long-running server: stay bounded
                    self._words.clear()
                ids = self._words[piece] = self._encode_piece(piece)
            out.extend(ids)
        return out

    def _encode_piece(self, piece: str) -> list[int]:
        if piece in (SOT, EOT):
            return [self._ids[piece]]
        symbols = [self._bytes[b] for b in piece.encode("utf-8")]
        symbols[-1] += WORD_END
        ranks = self._ranks
        while len(symbols) > 1:
            best, best_rank = None, N_MERGES
            for pair in zip(symbols, symbols[1:], strict=False):
                rank = ranks.get(f"{pair[0]} {pair[1]}", N_MERGES)
                if rank < best_rank:
                    best, best_rank = pair, rank
            if best is None:
                break
            left, right = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):  # every occurrence, left to right, without overlaps
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return [self._ids[s] for s in symbols]

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token ids of shape (len(texts), context_length), int64, zero-padded."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text)][: self.context_length - 1]
            ids.append(self.eot_id)
            out[row, : len(ids)] = ids
        return out
