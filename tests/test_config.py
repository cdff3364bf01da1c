import pytest

from analysis.config import DEFAULT_CONFIG, load_config
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
