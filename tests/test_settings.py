"""clipsearch.settings: which index, model and exclude globs are in force, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.errors import ConfigError
from clipsearch.settings import resolve_settings, user_data_index


@pytest.fixture
def config(tmp_path) -> Path:
    """Where the tests' config file goes (absent until a test writes it)."""
    return tmp_path / "etc" / "clipsearch.toml"


@pytest.fixture
def cwd(tmp_path) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def resolve(config: Path, cwd: Path, env_index: str | None = None, **explicit):
    environ = {"CLIPSEARCH_CONFIG": str(config)}
    if env_index is not None:
        environ["CLIPSEARCH_INDEX"] = env_index
    return resolve_settings(**explicit, environ=environ, cwd=cwd)


def test_index_precedence_step_by_step(config, cwd):
    """--index > CLIPSEARCH_INDEX > ./indexes/default > the config file > the user data dir:
    each step is checked with every later source present."""
    write(config, 'index = "from-config"\n')
    (cwd / "indexes" / "default").mkdir(parents=True)
    s = resolve(config, cwd, env_index="from-env", index="from-option")
    assert (s.index.value, s.index.source) == (Path("from-option"), "--index")
    s = resolve(config, cwd, env_index="from-env")
    assert (s.index.value, s.index.source) == (Path("from-env"), "CLIPSEARCH_INDEX")
    s = resolve(config, cwd)
    assert s.index.value == cwd / "indexes" / "default"
    assert s.index.source == "./indexes/default exists"
    (cwd / "indexes" / "default").rmdir()
    s = resolve(config, cwd)
    assert s.index.value == config.parent / "from-config"  # relative to the config file
    assert s.index.source == f"config file {config}"
    config.unlink()
    s = resolve(config, cwd)
    assert s.index.source == "user data dir" and not s.config_found
    assert s.index.value == user_data_index()
    # the autouse fixture's XDG_DATA_HOME: no test touches the real user data dir
    assert s.index.value.is_relative_to(Path.home())
    assert s.index.value.parts[-3:] == ("clipsearch", "indexes", "default")


def test_empty_environment_variable_counts_as_unset(config, cwd):
    assert resolve(config, cwd, env_index="").index.source == "user data dir"


def test_config_index_expands_home(config, cwd):
    write(config, 'index = "~/photo-index"\n')
    assert resolve(config, cwd).index.value == Path.home() / "photo-index"


def test_model_and_pretrained_come_together(config, cwd):
    s = resolve(config, cwd)
    assert (s.model.value, s.model.source) == (None, "built-in default")
    assert s.pretrained.source == "built-in default" and s.model_is_default
    write(config, 'model = "ViT-B-32"\npretrained = "openai"\n')
    s = resolve(config, cwd)
    assert (s.model.value, s.pretrained.value) == ("ViT-B-32", "openai")
    assert s.model.source == s.pretrained.source == f"config file {config}"
    assert s.model_is_default  # a config file's model is for a new index only
    # --model replaces the config file's model and its weights
    s = resolve(config, cwd, model="demo")
    assert (s.model.value, s.model.source) == ("demo", "--model")
    assert (s.pretrained.value, s.pretrained.source) == (None, "--model")
    assert not s.model_is_default
    # --pretrained alone: the built-in default model with those weights
    s = resolve(config, cwd, pretrained="random")
    assert (s.model.value, s.model.source) == (None, "built-in default")
    assert (s.pretrained.value, s.pretrained.source) == ("random", "--pretrained")
    assert not s.model_is_default


def test_exclude_option_replaces_config(config, cwd):
    write(config, 'exclude = ["*.tmp", "raw/*"]\n')
    s = resolve(config, cwd)
    assert s.exclude.value == ("*.tmp", "raw/*") and s.exclude.source == f"config file {config}"
    s = resolve(config, cwd, exclude=("*.png",))
    assert (s.exclude.value, s.exclude.source) == (("*.png",), "--exclude")
    config.unlink()
    assert resolve(config, cwd).exclude.value == ()


def test_to_dict_holds_values_and_sources(config, cwd):
    write(config, 'exclude = ["*.tmp"]\n')
    d = resolve(config, cwd, index="idx").to_dict()
    assert d["config_file"] == {"path": str(config), "found": True}
    assert d["index"] == {"value": "idx", "source": "--index"}
    assert d["exclude"] == {"value": ["*.tmp"], "source": f"config file {config}"}
    assert d["model"] == {"value": None, "source": "built-in default"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('index = "a"\nmodle = "ViT-B-32"\n', "unknown key 'modle'"),
        ('exclude = "*.tmp"\n', "key 'exclude' must be a list"),
        ("exclude = [1, 2]\n", "key 'exclude' must be a list"),
        ("model = 3\n", "key 'model' must be a non-empty string"),
        ('index = ""\n', "key 'index' must be a non-empty string"),
        ('index = ["a"\n', "not valid TOML"),
        (b"model = '\xff'\n", "cannot be read"),
    ],
)
def test_bad_config_file_is_one_clear_error(config, cwd, text, says):
    config.parent.mkdir(parents=True)
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve(config, cwd, index="given")  # a bad file is an error even when unused
    message = str(e.value)
    assert message.startswith(f"config file {config}: ") and says in message
    assert "\n" not in message
