from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from r1lab.cli import main as cli_main
from r1lab.recipe import load_config, save_config
from r1lab.errors import R1labError


@dataclass(frozen=True)
class Data:
    train: str = ""
    eval: str | None = None


@dataclass(frozen=True)
class Cfg:
    model: str = "m"
    learning_rate: float = 1e-3
    steps: int = 10
    tasks: tuple[str, ...] = ("a",)
    data: Data = field(default_factory=Data)
    flag: bool = False

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("learning_rate: 2\nsteps: 5\ndata:\n  train: t.jsonl\n")
    cfg = load_config(Cfg, str(path), ["steps=7", "data.eval=e.jsonl", "tasks=[x, y]", "flag=true"])
    assert cfg == Cfg(learning_rate=2.0, steps=7, tasks=("x", "y"), data=Data("t.jsonl", "e.jsonl"), flag=True)
    with pytest.raises(FrozenInstanceError):
        cfg.steps = 1  # frozen


def test_config_errors_name_key_and_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stepz: 5\n")
    with pytest.raises(R1labError, match=r"r\.yaml: unknown key 'stepz'"):
        load_config(Cfg, str(path))
    with pytest.raises(R1labError, match="unknown key 'data.test'"):
        load_config(Cfg, None, ["data.test=1"])
    with pytest.raises(R1labError, match="'steps' must be int"):
        load_config(Cfg, None, ["steps=many"])
    with pytest.raises(R1labError, match="steps must be >= 0"):
        load_config(Cfg, None, ["steps=-1"])
    with pytest.raises(R1labError, match="config file not found"):
        load_config(Cfg, str(tmp_path / "none.yaml"))
    with pytest.raises(R1labError, match="key=value"):
        load_config(Cfg, None, ["steps"])


@dataclass(frozen=True)
class Parent:
    data: Data = field(default_factory=lambda: Data(train="default.jsonl", eval="held.jsonl"))


def test_partial_section_keeps_the_parents_defaults():
    # overriding one key of a section must not reset its other keys to the section class's defaults
    assert load_config(Parent, None, ["data.eval=x.jsonl"]).data == Data(train="default.jsonl", eval="x.jsonl")


@dataclass(frozen=True)
class Outer:
    inner: Parent = field(default_factory=lambda: Parent(data=Data(train="deep.jsonl", eval="e.jsonl")))


def test_partial_section_two_levels_down_keeps_defaults():
    assert load_config(Outer, None, ["inner.data.eval=x.jsonl"]).inner.data == Data(train="deep.jsonl", eval="x.jsonl")


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(Cfg, None, ["data.train=x.jsonl", "tasks=[b]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Cfg, str(tmp_path / "config.yaml")) == cfg


def test_cli_user_errors_are_one_line(capsys):
    assert cli_main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'frobnicate'") and err.count("\n") == 1
    assert cli_main(["eval", "no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'no_such_key'" in err and "Traceback" not in err
