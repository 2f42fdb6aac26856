"""open_clip models whose text tower comes from Hugging Face transformers (``CustomTextCLIP``
with ``text_cfg.hf_model_name``: ``xlm-roberta-base-ViT-B-32``, ``nllb-clip-base``, ...).

Such a tower needs the ``clipsearch[multilingual]`` extra, and more files than the CLIP
weights: the tower's ``config.json`` (open_clip builds it with ``AutoConfig.from_pretrained``)
and its tokenizer (``AutoTokenizer.from_pretrained``). This module says what those are, so that
the loader can check them up front and fail with one line, and makes a ``local-dir:`` folder's
relative ``hf_model_name`` (``"."``, ``"text"``) name a folder inside it, whatever the current
directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from clipsearch.errors import ModelLoadError
from clipsearch.models.identity import local_hf_model_dir

EXTRA = "multilingual"
INSTALL_HINT = f"pip install 'clipsearch[{EXTRA}]'"
REQUIRED_PACKAGES = ("transformers", "tokenizers")

# What AutoTokenizer needs of a hub repo: one of these (the fast tokenizer's own file, or the
# config that names the tokenizer class and its vocabulary files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
HF_CONFIG_FILE = "config.json"


def require_transformers(model: str, text_cfg: dict[str, Any]) -> None:
    """Fail with one line that says what to install when the packages an HF text tower needs
    are missing.

    Raises:
        ModelLoadError: ``transformers`` or ``tokenizers`` cannot be imported.
    """
    missing = [name for name in REQUIRED_PACKAGES if not _importable(name)]
    if missing:
        tower = text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")
        raise ModelLoadError(
            f"model {model}: its text tower ({tower}) comes from Hugging Face transformers, and "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
            f"fix: {INSTALL_HINT}"
        )


def _importable(name: str) -> bool:
    """Whether ``import name`` would find the package (without importing it: transformers
    alone takes seconds). A module set to None in ``sys.modules`` counts as missing."""
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def local_dir_text_cfg(folder: Path, text_cfg: dict[str, Any]) -> dict[str, Any]:
    """A ``local-dir:`` folder's HF ``text_cfg`` for ``open_clip.create_model(text_cfg=...)``:
    ``hf_model_name`` made absolute where it names a folder relative to the model folder (open_clip
    would read it relative to the current directory), and the tower built from its config only,
    since the folder's checkpoint holds its weights."""
    resolved = dict(text_cfg)
    tower = local_hf_model_dir(folder, str(text_cfg.get("hf_model_name") or ""))
    if tower is not None:
        resolved["hf_model_name"] = str(tower.resolve())
    resolved["hf_model_pretrained"] = False
    return resolved


def hub_files(
    text_cfg: dict[str, Any], folder: Path | None = None
) -> list[tuple[str, list[str], str]]:
    """The hub repositories an HF text tower reads from: (repo, the files of which one must be
    cached for an offline load, what they are): the tower's config and, unless the tokenizer
    comes from a ``local-dir:`` folder, the tokenizer's files.

    Args:
        text_cfg: the model's ``text_cfg``.
        folder: the ``local-dir:`` model folder, if it is one.
    """
    needed: list[tuple[str, list[str], str]] = []
    name = str(text_cfg.get("hf_model_name") or "")
    in_folder = folder is not None and local_hf_model_dir(folder, name) is not None
    if name and not in_folder and not Path(name).expanduser().is_dir():
        needed.append((name, [HF_CONFIG_FILE], "text tower config"))
    tokenizer = str(text_cfg.get("hf_tokenizer_name") or "")
    if folder is None and tokenizer and not Path(tokenizer).expanduser().is_dir():
        needed.append((tokenizer, list(TOKENIZER_FILES), "tokenizer"))
    return needed


def check_local_tokenizer(model: str, folder: Path) -> None:
    """open_clip reads a ``local-dir:`` model's HF tokenizer from the folder itself: fail with
    one line when it is not there.

    Raises:
        ModelLoadError: none of the tokenizer files is in ``folder``.
    """
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model {model}: its Hugging Face text tower needs its tokenizer in the model "
            f"folder ({' or '.join(TOKENIZER_FILES)} in {folder}); fix: save the tokenizer "
            "there with tokenizer.save_pretrained(FOLDER)"
        )
