"""Tests for bv.core.config: argument parsing, loading, overrides and saving."""

from __future__ import annotations

import json
import os
import textwrap

import ml_collections
import numpy as np
import pytest
from ml_collections import config_dict

from bv.core import config as cfg
from bv.core.config import ConfigError

CONFIG_FILE = textwrap.dedent(
    '''
    """A tiny config for tests."""
    import ml_collections
    from bv.core.config import parse_arg

    def get_config(arg=None):
        arg = parse_arg(arg, variant="S/16", runlocal=False, lr=0.001, depth=12)
        config = ml_collections.ConfigDict()
        config.variant = arg.variant
        config.runlocal = arg.runlocal
        config.lr = arg.lr
        config.model = dict(depth=arg.depth, width=384)
        return config
    '''
)


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


# parse_arg ----------------------------------------------------------------------


def test_parse_arg_defaults_when_empty():
    for arg in (None, ""):
        out = cfg.parse_arg(arg, variant="S/16", fsdp=False, lr=0.1, steps=10, init=None)
        assert out.to_dict() == {"variant": "S/16", "fsdp": False, "lr": 0.1, "steps": 10, "init": None}


def test_parse_arg_types_follow_defaults():
    out = cfg.parse_arg(
        "variant=B/16,fsdp,lr=0.5,steps=20,init=gs://a/b", variant="S/16", fsdp=False, lr=0.1, steps=10, init=None
    )
    assert out.variant == "B/16"
    assert out.fsdp is True
    assert out.lr == 0.5 and isinstance(out.lr, float)
    assert out.steps == 20 and isinstance(out.steps, int)
    assert out.init == "gs://a/b"


def test_parse_arg_float_accepts_int_text_and_int_accepts_1e3():
    out = cfg.parse_arg("lr=3,steps=1e3", lr=0.1, steps=10)
    assert out.lr == 3.0 and isinstance(out.lr, float)
    assert out.steps == 1000 and isinstance(out.steps, int)


@pytest.mark.parametrize("text,expected", [("False", False), ("0", False), ("true", True), ("1", True), ("TRUE", True)])
def test_parse_arg_bool_forms(text, expected):
    assert cfg.parse_arg(f"fsdp={text}", fsdp=not expected).fsdp is expected


def test_parse_arg_spaces_are_ignored():
    out = cfg.parse_arg(" variant = B/32 ,  fsdp , lr= 0.25 ", variant="S/16", fsdp=False, lr=0.1)
    assert (out.variant, out.fsdp, out.lr) == ("B/32", True, 0.25)


def test_parse_arg_lone_value_is_first_key():
    assert cfg.parse_arg("B/8", variant="S/16", fsdp=False).variant == "B/8"
    assert cfg.parse_arg("fsdp", variant="S/16", fsdp=False).fsdp is True


def test_parse_arg_unknown_key_lists_known_and_close_match():
    with pytest.raises(ConfigError) as e:
        cfg.parse_arg("variant=B/16,fsdpp", variant="S/16", fsdp=False, runlocal=False)
    msg = str(e.value)
    assert "'fsdpp'" in msg and "Did you mean 'fsdp'" in msg
    assert "variant, fsdp, runlocal" in msg


def test_parse_arg_bad_values():
    with pytest.raises(ConfigError, match="'steps' expects an int.*'ten'"):
        cfg.parse_arg("steps=ten", steps=10)
    with pytest.raises(ConfigError, match="'fsdp' expects a bool"):
        cfg.parse_arg("fsdp=maybe", fsdp=False)
    with pytest.raises(ConfigError, match="needs a value"):
        cfg.parse_arg("variant,fsdp", variant="S/16", fsdp=False)
    with pytest.raises(ConfigError, match="twice"):
        cfg.parse_arg("lr=1,lr=2", lr=0.1)


# load_config ----------------------------------------------------------------------


def test_load_config_file_without_and_with_args(tmp_path):
    path = write(tmp_path / "tiny.py", CONFIG_FILE)
    plain = cfg.load_config(path)
    assert plain.variant == "S/16" and plain.runlocal is False and plain.model.depth == 12
    custom = cfg.load_config(f"{path}:variant=B/16,runlocal,depth=6")
    assert custom.variant == "B/16" and custom.runlocal is True and custom.model.depth == 6
    assert isinstance(custom, ml_collections.ConfigDict)


def test_load_config_keeps_colons_inside_args(tmp_path):
    text = CONFIG_FILE.replace('variant="S/16"', 'variant="S/16", init=None').replace(
        "config.runlocal = arg.runlocal", "config.init = arg.init"
    )
    path = write(tmp_path / "with_init.py", text)
    assert cfg.load_config(f"{path}:init=gs://bucket/ckpt.npz").init == "gs://bucket/ckpt.npz"


def test_load_config_from_module_path(tmp_path, monkeypatch):
    pkg = tmp_path / "bvtest_cfgpkg" / "configs"
    pkg.mkdir(parents=True)
    (tmp_path / "bvtest_cfgpkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    write(pkg / "tiny.py", CONFIG_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = cfg.load_config("bvtest_cfgpkg.configs.tiny:variant=L/14,lr=0.01")
    assert config.variant == "L/14" and config.lr == 0.01
    assert cfg.load_config("bvtest_cfgpkg.configs.tiny").variant == "S/16"
    with pytest.raises(ConfigError, match="neither a file nor an importable module"):
        cfg.load_config("bvtest_cfgpkg.configs.nope")


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_config(str(tmp_path / "missing.py"))
    no_fn = write(tmp_path / "no_fn.py", "x = 1\n")
    with pytest.raises(ConfigError, match="no get_config"):
        cfg.load_config(no_fn)
    no_arg = write(
        tmp_path / "no_arg.py", "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict()\n"
    )
    assert cfg.load_config(no_arg).to_dict() == {}
    with pytest.raises(ConfigError, match="takes no arguments"):
        cfg.load_config(f"{no_arg}:x=1")
    bad_return = write(tmp_path / "bad_return.py", "def get_config(arg=None):\n    return 3\n")
    with pytest.raises(ConfigError, match="must return a ConfigDict"):
        cfg.load_config(bad_return)


def test_load_config_converts_plain_dict(tmp_path):
    path = write(tmp_path / "as_dict.py", "def get_config(arg):\n    return {'a': arg, 'b': {'c': 1}}\n")
    config = cfg.load_config(f"{path}:hello")
    assert isinstance(config, ml_collections.ConfigDict)
    assert config.a == "hello" and config.b.c == 1


# apply_overrides ----------------------------------------------------------------------


def make_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.lr = 0.1
    config.total_steps = 100
    config.fsdp = False
    config.name = "vit"
    config.model_init = None
    config.mesh = [("data", -1)]
    config.res = (224, 224)
    config.rate = config_dict.placeholder(int)
    config.model = dict(width=384, depth=12, head=dict(bias=0.0))
    config.pp_kw = dict(a=1)
    return config


def test_overrides_parse_to_field_types():
    config = cfg.apply_overrides(
        make_config(),
        [
            ("lr", "0.03"),
            ("total_steps", "2000"),
            ("fsdp", "true"),
            ("name", "B/16"),
            ("model.width", "768"),
            ("model.head.bias", "-6.5"),
            ("res", "(384, 384)"),
            ("mesh", "[('data', 2), ('model', 4)]"),
            ("rate", "7"),
        ],
    )
    assert config.lr == 0.03 and isinstance(config.lr, float)
    assert config.total_steps == 2000 and isinstance(config.total_steps, int)
    assert config.fsdp is True
    assert config.name == "B/16"
    assert config.model.width == 768 and config.model.head.bias == -6.5
    assert config.res == (384, 384)
    assert config.mesh == [("data", 2), ("model", 4)]
    assert config.rate == 7


def test_overrides_list_and_tuple_accept_either_literal():
    config = cfg.apply_overrides(make_config(), [("res", "[128, 96]"), ("mesh", "('data', 8),")])
    assert config.res == (128, 96)
    assert config.mesh == [("data", 8)]


def test_overrides_none_fields_take_literals_or_text():
    config = cfg.apply_overrides(make_config(), [("model_init", "path/to/ckpt.npz")])
    assert config.model_init == "path/to/ckpt.npz"
    config = cfg.apply_overrides(make_config(), [("model_init", "{'a': 1}")])
    assert config.model_init.a == 1
    config = cfg.apply_overrides(make_config(), [("model_init", "0.5")])
    assert config.model_init == 0.5


def test_overrides_none_clears_a_field_and_dict_replaces_a_group():
    config = cfg.apply_overrides(make_config(), [("lr", "None"), ("pp_kw", "{'b': 2, 'c': 'x'}")])
    assert config.lr is None
    assert config.pp_kw.to_dict() == {"b": 2, "c": "x"}


def test_overrides_work_on_locked_config():
    config = make_config()
    config.lock()
    cfg.apply_overrides(config, [("model.depth", "24")])
    assert config.model.depth == 24


def test_override_typo_suggests_key_and_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        cfg.apply_overrides(make_config(), [("model.widht", "1")])
    msg = str(e.value)
    assert "'model.widht'" in msg and "Did you mean 'width'" in msg
    assert "depth, head, width" in msg
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        cfg.apply_overrides(make_config(), [("lrr", "1")])


def test_override_into_a_leaf_is_rejected():
    with pytest.raises(ConfigError, match="'lr' is a float, not a group"):
        cfg.apply_overrides(make_config(), [("lr.x", "1")])


@pytest.mark.parametrize(
    "key,text,expected",
    [
        ("total_steps", "0.5", "an int"),
        ("lr", "fast", "a float"),
        ("fsdp", "yesplease", "a bool"),
        ("res", "224", "a tuple"),
    ],
)
def test_override_type_mismatch_names_key_type_and_text(key, text, expected):
    with pytest.raises(ConfigError) as e:
        cfg.apply_overrides(make_config(), [(key, text)])
    msg = str(e.value)
    assert repr(key) in msg and expected in msg and repr(text) in msg


# saving ----------------------------------------------------------------------


def test_save_config_writes_readable_json(tmp_path):
    config = make_config()
    config.fn = len  # not JSON-able: stored as its repr
    config.scalar = np.float32(0.5)
    workdir = str(tmp_path / "run" / "1")
    path = cfg.save_config(config, workdir)
    assert path == os.path.join(workdir, "config.json")
    with open(path) as f:
        loaded = json.load(f)
    assert loaded["lr"] == 0.1 and loaded["model"]["head"]["bias"] == 0.0
    assert loaded["res"] == [224, 224]
    assert loaded["mesh"] == [["data", -1]]
    assert loaded["model_init"] is None and loaded["rate"] is None
    assert loaded["fn"] == repr(len)
    assert loaded["scalar"] == 0.5
    assert os.listdir(workdir) == ["config.json"]  # no temporary file left behind
    assert json.loads(cfg.to_json(config)) == loaded


def test_trainer_switches_can_be_set_without_the_config_spelling_them_out():
    config = ml_collections.ConfigDict({"lr": 0.1})
    cfg.apply_overrides(config, [("ckpt_async", "False"), ("ckpt_compress", "True")])
    assert config.ckpt_async is False and config.ckpt_compress is True
    with pytest.raises(ConfigError, match="Unknown config key 'ckpt_asyn'.*Did you mean 'ckpt_async'"):
        cfg.apply_overrides(ml_collections.ConfigDict({"lr": 0.1, "ckpt_async": True}), [("ckpt_asyn", "False")])
