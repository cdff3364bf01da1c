import dataclasses
import typing

import pytest

from analysis import config as config_module
from analysis.config import DEFAULT_CONFIG, AnalysisConfig, load_config
from analysis.errors import InputError


def test_default_config_is_the_demo():
    config = load_config()
    assert config.demo and config.run_dir.name == "run" and config.cache_dir.is_absolute()
    assert all(p.is_file() for p in config.gene_sets)


def test_overrides_replace_single_fields():
    assert load_config(DEFAULT_CONFIG, device="cpu", n_draws=2).n_draws == 2


@pytest.mark.parametrize("text, fragment", [
    ("[model]\nrun_dir='x'\nbogus=1\n", "[model].bogus"),
    ("[nonsense]\na=1\n", "unknown section"),
    ("[model]\nrun_dir='x'\n", "missing required"),
    ("[model\n", "not valid TOML"),
    ("[model]\nrun_dir='x'\n[data]\nh5ad='y'\n[runtime]\ncache_dir='c'\ndevice='tpu'\n", "[runtime].device"),
    ("[model]\nrun_dir='x'\n[data]\nh5ad='y'\n[runtime]\ncache_dir='c'\n[enrichment]\ngene_sets=['nope.gmt']\n", "gene_sets"),
    ("[model]\nrun_dir='x'\n[data]\nh5ad='y'\n[runtime]\ncache_dir='c'\n[quality]\nde_metrics='sometimes'\n",
     "[quality].de_metrics"),
])
def test_bad_config_is_one_line_error_naming_the_field(tmp_path, text, fragment):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


REQUIRED = {"model": {"run_dir": '"x"'}, "data": {"h5ad": '"y"'}, "runtime": {"cache_dir": '"c"'}}
FIELDS = [(section, key) for section, keys in sorted(config_module._SECTIONS.items()) for key in sorted(keys)]


def test_every_config_field_is_read_from_a_section():
    names = {config_module._RENAMES.get(pair, pair[1]) for pair in FIELDS}
    assert names == {f.name for f in dataclasses.fields(AnalysisConfig)} - {"source"}


def _wrong_value(kind) -> str:
    """A TOML value of another type than `kind` (the dataclass annotation)."""
    text = str(kind)
    if text.startswith("tuple"):
        return "5"
    return {"int": '"2"', "float": '"0.5"', "bool": '"yes"'}.get(text, "5")  # str and Path fields get a number


@pytest.mark.parametrize("section, key", FIELDS)
def test_every_field_is_type_checked(tmp_path, section, key):
    name = config_module._RENAMES.get((section, key), key)
    kind = typing.get_type_hints(AnalysisConfig)[name]
    kind = kind.__name__ if isinstance(kind, type) else str(kind)
    value = _wrong_value(kind)
    sections = {name: dict(values) for name, values in REQUIRED.items()}
    sections.setdefault(section, {})[key] = value
    path = tmp_path / "c.toml"
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                            for name, values in sections.items()))
    with pytest.raises(InputError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path} [{section}].{key}: expected ") and value.strip('"') in message
    assert "\n" not in message


def test_wrong_typed_override_names_the_override():
    with pytest.raises(InputError, match=r"^override n_draws: expected an integer, got '2'$"):
        load_config(DEFAULT_CONFIG, n_draws="2")


def test_the_packaged_demo_config_resolves_against_the_working_directory(tmp_path, monkeypatch):
    """The packaged config (the CLI default, also in a wheel) puts the demo in ./cache; the repository's
    configs/demo.toml, which the report reads, is the same config with paths from its own folder."""
    assert DEFAULT_CONFIG.is_relative_to(config_module.PACKAGE_DIR)
    root = config_module.PACKAGE_DIR.parent
    monkeypatch.chdir(root)
    assert load_config().describe() == load_config(root / "configs" / "demo.toml").describe()
    monkeypatch.chdir(tmp_path)
    packaged = load_config()
    assert packaged.cache_dir == tmp_path / "cache" and packaged.run_dir == tmp_path / "cache" / "demo" / "run"
    assert all(p.parent == config_module.PACKAGE_DIR / "genesets" for p in packaged.gene_sets)
