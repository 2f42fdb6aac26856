"""Domain errors. The library raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base class for every error clipsearch raises on purpose."""


class ConfigError(ClipsearchError):
    """The config file (clipsearch.toml) cannot be read: bad TOML, an unknown key, a value of
    the wrong type. The message names the file and the key."""


class ModelLoadError(ClipsearchError):
    """A model or its weights could not be found, downloaded or read."""


class IndexNotFoundError(ClipsearchError):
    """The index directory does not exist or holds no index."""


class IndexMismatchError(ClipsearchError):
    """The index was built with a different model than the one requested."""


class CorruptIndexError(ClipsearchError):
    """An index file is truncated or unreadable."""


class IndexVersionError(CorruptIndexError):
    """The index was written by a newer clipsearch, whose schema this one does not know.

    A :class:`CorruptIndexError` for those who catch that: this one cannot read it either, but
    nothing is damaged; a newer clipsearch opens it."""


class IndexLockedError(ClipsearchError):
    """Another process is writing to this index."""


class ImageReadError(ClipsearchError):
    """One image could not be read or decoded. `reason` is short and specific."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class QueryError(ClipsearchError):
    """A search query or its options are invalid."""


class EmptyIndexError(QueryError):
    """A search was asked of an index that holds no images."""


class StyleError(ClipsearchError):
    """Style labels cannot be trained or applied: bad labels, too little training data."""


class StyleHeadError(StyleError):
    """A trained style head is missing, unreadable, or belongs to another backbone model."""


class LinkFolderError(ClipsearchError):
    """A folder cannot take result links: it holds files clipsearch did not put there, is not
    a folder, or a link cannot be made in it. Nothing in it was deleted or overwritten."""


class TrainingError(ClipsearchError):
    """Training data, settings or checkpoints are unusable; the message says which and why."""


class ClusterUnavailableError(ClipsearchError):
    """The Ray cluster cannot do the work: its address does not answer within the timeout,
    no node has room for an encoder actor, or every actor was lost and none could restart.
    The message names the address or the nodes; what was committed stays, and a rerun
    resumes."""


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception's message on one line, cut at ``limit`` characters: for messages that
    quote a third-party library's error."""
    text = " ".join(str(e).split())
    return text[:limit] + ("…" if len(text) > limit else "")
