"""Where the index lives, which model a new index gets, which files indexing skips, and why.

Each value comes from the first of these that gives it:

1. the caller's explicit value (the command line's ``--index``, ``--model``/``--pretrained``,
   ``--exclude``);
2. the environment: ``CLIPSEARCH_INDEX`` (the index only);
3. ``./indexes/default`` when that folder exists in the current folder (the index only: the
   layout of earlier releases, and of a project that keeps its index beside it);
4. the config file, ``clipsearch.toml`` in the user's config folder, or the file that
   ``CLIPSEARCH_CONFIG`` names;
5. the built-in default: ``indexes/default`` in the user's data folder; the default model
   (:data:`~clipsearch.models.identity.DEFAULT_MODEL`); no exclude globs.

The model and its weights go together: a ``--model`` or ``--pretrained`` replaces the config
file's ``model`` and ``pretrained`` both. A model that does not come from the caller is a default
for a new index only; an existing index keeps the model it was built with.

Torch-free and cheap: the command line resolves its settings before every command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from clipsearch.errors import ConfigError

T = TypeVar("T")

APP_NAME = "clipsearch"
CONFIG_FILE_NAME = "clipsearch.toml"
CONFIG_ENV = "CLIPSEARCH_CONFIG"
INDEX_ENV = "CLIPSEARCH_INDEX"
LOCAL_INDEX = Path("indexes") / "default"

FROM_OPTION = {"index": "--index", "model": "--model", "exclude": "--exclude"}
FROM_ENV = INDEX_ENV
FROM_LOCAL = "./indexes/default exists"
FROM_DATA_DIR = "user data dir"
FROM_DEFAULT = "built-in default"

_KEYS = {"index": "a string", "model": "a string", "pretrained": "a string", "exclude": "a list"}


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One resolved value and where it came from (``"--index"``, ``"CLIPSEARCH_INDEX"``,
    ``"config file PATH"``, ``"built-in default"``, ...)."""

    value: T
    source: str


@dataclass(frozen=True)
class Settings:
    """The settings in force, each with its source.

    Attributes:
        index: the index folder, absolute unless the caller or CLIPSEARCH_INDEX gave a
            relative one.
        model: the model name; ``None`` for the built-in default (or, with ``pretrained``
            given alone, the default model with those weights).
        pretrained: the weights tag or file, ``None`` for the model's default weights.
        exclude: glob patterns that indexing skips.
        config_file: the config file looked for, whether or not it exists.
        config_found: whether it exists (and was read).
    """

    index: Setting[Path]
    model: Setting[str | None]
    pretrained: Setting[str | None]
    exclude: Setting[tuple[str, ...]]
    config_file: Path
    config_found: bool

    @property
    def model_is_default(self) -> bool:
        """True when the model was not given by the caller: it is then only the model of a new
        index, and an existing index keeps its own."""
        return self.model.source != "--model" and self.pretrained.source != "--pretrained"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config_file": {"path": str(self.config_file), "found": self.config_found}
        }
        for name in ("index", "model", "pretrained", "exclude"):
            setting: Setting[Any] = getattr(self, name)
            value = setting.value
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = {"value": value, "source": setting.source}
        return out


def user_data_index() -> Path:
    """The index used when nothing else names one: ``indexes/default`` in the user's data
    folder (``$XDG_DATA_HOME/clipsearch`` or ``~/.local/share/clipsearch`` on Linux,
    ``~/Library/Application Support/clipsearch`` on macOS, ``%LOCALAPPDATA%\\clipsearch`` on
    Windows)."""
    import platformdirs

    return platformdirs.user_data_path(APP_NAME, appauthor=False) / LOCAL_INDEX


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The config file: the one CLIPSEARCH_CONFIG names, else ``clipsearch.toml`` in the
    user's config folder (``$XDG_CONFIG_HOME/clipsearch`` or ``~/.config/clipsearch`` on
    Linux)."""
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).expanduser().absolute()
    import platformdirs

    return platformdirs.user_config_path(APP_NAME, appauthor=False) / CONFIG_FILE_NAME


def read_config(path: Path) -> dict[str, Any]:
    """The checked contents of a config file; ``{}`` when it does not exist. Paths in it are
    expanded (``~``) and made absolute against the file's folder.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or holds an unknown key or a value
            of the wrong type.
    """
    if not path.exists():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot be read: {e}") from None
    for key, value in data.items():
        _check_value(path, key, value)
    if "index" in data:
        data["index"] = (path.parent / Path(data["index"]).expanduser()).absolute()
    if "exclude" in data:
        data["exclude"] = tuple(data["exclude"])
    return data


def _check_value(path: Path, key: str, value: Any) -> None:
    if key not in _KEYS:
        raise ConfigError(
            f"config file {path}: unknown key {key!r}; the keys are {', '.join(_KEYS)}"
        )
    if key == "exclude":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        what = 'a list of glob strings, e.g. exclude = ["*.tmp"]'
    else:
        ok = isinstance(value, str) and bool(value.strip())
        what = f'a non-empty string, e.g. {key} = "..."'
    if not ok:
        raise ConfigError(f"config file {path}: key {key!r} must be {what}")


def resolve_settings(
    index: str | os.PathLike[str] | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    exclude: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Settings:
    """Resolve the settings in force, in the order the module describes.

    Args:
        index, model, pretrained, exclude: the caller's explicit values (``None``, or an
            empty ``exclude``, when not given); they win over everything else.
        environ: the environment to read (default: ``os.environ``).
        cwd: the folder ``./indexes/default`` is looked for in (default: the current one).

    Raises:
        ConfigError: the config file is bad.
    """
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    config = read_config(path)
    from_config = f"config file {path}"
    return Settings(
        index=_resolve_index(
            index, environ, Path.cwd() if cwd is None else Path(cwd), config, from_config
        ),
        **_resolve_model(model, pretrained, config, from_config),
        exclude=_first(
            (tuple(exclude or ()) or None, FROM_OPTION["exclude"]),
            (config.get("exclude"), from_config),
            default=Setting((), FROM_DEFAULT),
        ),
        config_file=path,
        config_found=path.exists(),
    )


def _resolve_index(
    index: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    cwd: Path,
    config: dict[str, Any],
    from_config: str,
) -> Setting[Path]:
    local = cwd / LOCAL_INDEX
    return _first(
        (Path(index) if index is not None else None, FROM_OPTION["index"]),
        (Path(environ[INDEX_ENV]) if environ.get(INDEX_ENV) else None, FROM_ENV),
        (local.absolute() if local.is_dir() else None, FROM_LOCAL),
        (config.get("index"), from_config),
        default=None,
    ) or Setting(user_data_index(), FROM_DATA_DIR)


def _resolve_model(
    model: str | None, pretrained: str | None, config: dict[str, Any], from_config: str
) -> dict[str, Setting[str | None]]:
    """The model and its weights, which come together: from the caller when it gives either,
    else from the config file when it names either, else the built-in default."""
    if model is not None or pretrained is not None:
        src, given = "--model", {"model": model, "pretrained": pretrained}
    elif "model" in config or "pretrained" in config:
        src, given = from_config, config
    else:
        return {"model": Setting(None, FROM_DEFAULT), "pretrained": Setting(None, FROM_DEFAULT)}
    model_src = src if given.get("model") is not None else FROM_DEFAULT
    if given.get("pretrained") is not None:
        pretrained_src = "--pretrained" if src == "--model" else src
    else:  # the model's own default weights
        pretrained_src = model_src
    return {
        "model": Setting(given.get("model"), model_src),
        "pretrained": Setting(given.get("pretrained"), pretrained_src),
    }


def _first(*candidates: tuple[Any, str], default: Any) -> Any:
    """The first candidate whose value is not None, as a :class:`Setting`."""
    for value, source in candidates:
        if value is not None:
            return Setting(value, source)
    return default
