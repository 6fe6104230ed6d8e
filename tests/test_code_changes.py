"""Resuming after the code changed: fields added to, removed from and renamed in a state.

Every test writes a checkpoint with one state class and resumes it with another, through
the real ``StateManager`` (or ``hyperstate.load``), the way a user resumes a run after
editing ``train.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import hyperstate
from hyperstate.schema.rewrite_rule import RenameField
from hyperstate.typeinfo import describe_type, format_type, schema_of

INTERNAL_NAMES = ("StatefulType", "SerializableType", "TensorType", "BlobType", "PerRankType")


@dataclass
class Config:
    lr: float = 0.1


def _model() -> nn.Module:
    return nn.Linear(3, 2)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """One step that moves the weights away from any freshly built model's."""
    loss = model(torch.ones(4, 3)).pow(2).sum()
    if optimizer is None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _resume(state_cls: type, initial: Any, checkpoint_dir: Path) -> Any:
    return hyperstate.StateManager(Config, state_cls, initial, None, checkpoint_dir)


def _checkpoint(state_cls: type, initial: Any, checkpoint_dir: Path, change: Any) -> Any:
    """Start a run, let ``change`` train its state, commit one checkpoint; the state."""
    with hyperstate.StateManager(Config, state_cls, initial, None, checkpoint_dir) as sm:
        change(sm.state)
        sm.step()
        return sm.state


# ---------------------------------------------------------------------------------------
# Fields added since the checkpoint


@dataclass
class Before:
    step: int
    model: nn.Module


@dataclass
class After:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    head: nn.Module
    buffer: torch.Tensor
    seen: int
    count: int = 5
    bias: torch.Tensor = field(default_factory=lambda: torch.zeros(2))


def before(config: Config) -> Before:
    return Before(step=0, model=_model())


def after(config: Config) -> After:
    model = _model()
    return After(
        step=0,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=config.lr),
        head=nn.Linear(2, 1),
        buffer=torch.arange(3.0),
        seen=11,
        count=7,  # initial_state's value, not the dataclass default, is what code built
        bias=torch.ones(2),
    )


def _advance(state: Before) -> None:
    state.step = 3
    _train(state.model)


def test_added_fields_of_every_kind_take_the_initial_states_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = _checkpoint(Before, before, tmp_path, _advance)
    with caplog.at_level(logging.INFO, logger="hyperstate"), _resume(After, after, tmp_path) as sm:
        state = sm.state
        assert state.step == 3
        assert torch.equal(state.model.weight, saved.model.weight)  # from the checkpoint
        # The new optimizer is the one initial_state built, over the restored model.
        assert isinstance(state.optimizer, torch.optim.SGD)
        params = state.optimizer.param_groups[0]["params"]
        assert params[0] is state.model.weight
        assert isinstance(state.head, nn.Linear) and state.head.in_features == 2
        assert torch.equal(state.buffer, torch.arange(3.0))
        assert state.seen == 11
        assert state.count == 7  # initial_state's value wins over the default 5
        assert torch.equal(state.bias, torch.ones(2))
        # The run goes on, and its next checkpoint holds every field.
        _train(state.model, state.optimizer)
        state.count = 9
        sm.step()
    taken = [r for r in caplog.records if "taken from initial_state" in r.getMessage()]
    assert len(taken) == 1 and taken[0].levelno == logging.INFO
    assert (
        taken[0]
        .getMessage()
        .endswith(
            "fields not in the checkpoint, taken from initial_state: "
            "optimizer, head, buffer, seen, count, bias"
        )
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hyperstate"), _resume(After, after, tmp_path) as sm:
        assert sm.state.count == 9  # now from the checkpoint
        assert sm.state.optimizer.param_groups[0]["params"][0] is sm.state.model.weight
    assert "taken from initial_state" not in caplog.text


@dataclass
class Outer:
    step: int
    eval: EvalBefore


@dataclass
class EvalBefore:
    best: float
    old: int = 0


@dataclass
class OuterAfter:
    step: int
    eval: EvalAfter
    extra: EvalAfter


@dataclass
class EvalAfter:
    best: float
    history: torch.Tensor
    runs: int = 0


def outer(config: Config) -> Outer:
    return Outer(step=0, eval=EvalBefore(best=1.0))


def outer_after(config: Config) -> OuterAfter:
    return OuterAfter(
        step=0,
        eval=EvalAfter(best=1.0, history=torch.arange(4.0), runs=3),
        extra=EvalAfter(best=2.0, history=torch.zeros(1), runs=1),
    )


def test_fields_of_a_nested_dataclass_come_from_the_same_part_of_the_initial_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def change(state: Outer) -> None:
        state.step, state.eval.best, state.eval.old = 4, 0.25, 8

    _checkpoint(Outer, outer, tmp_path, change)
    with (
        caplog.at_level(logging.INFO, logger="hyperstate"),
        _resume(OuterAfter, outer_after, tmp_path) as sm,
    ):
        state = sm.state
    assert state.step == 4 and state.eval.best == 0.25  # from the checkpoint
    assert torch.equal(state.eval.history, torch.arange(4.0)) and state.eval.runs == 3
    assert state.extra.best == 2.0 and state.extra.runs == 1  # wholly new: all initial
    assert "taken from initial_state: eval.history, eval.runs, extra" in caplog.text
    assert "fields of the checkpoint that OuterAfter no longer has, ignored: eval.old" in (
        caplog.text
    )


# ---------------------------------------------------------------------------------------
# Fields removed since the checkpoint


@dataclass
class WithOldFields:
    step: int
    model: nn.Module
    old_counter: int
    old_weights: torch.Tensor


@dataclass
class WithoutThem:
    step: int
    model: nn.Module


def with_old_fields(config: Config) -> WithOldFields:
    return WithOldFields(0, _model(), 0, torch.zeros(2))


def without_them(config: Config) -> WithoutThem:
    return WithoutThem(0, _model())


def test_removed_fields_are_named_in_a_warning_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def change(state: WithOldFields) -> None:
        state.step, state.old_counter = 2, 5
        _train(state.model)

    saved = _checkpoint(WithOldFields, with_old_fields, tmp_path, change)
    with (
        caplog.at_level(logging.INFO, logger="hyperstate"),
        _resume(WithoutThem, without_them, tmp_path) as sm,
    ):
        assert sm.state.step == 2
        assert torch.equal(sm.state.model.weight, saved.model.weight)
        assert not hasattr(sm.state, "old_counter")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        warnings[0]
        .getMessage()
        .endswith(
            "state.ron: fields of the checkpoint that WithoutThem no longer has, ignored: "
            "old_counter, old_weights"
        )
    )
    assert "taken from initial_state" not in caplog.text


def test_a_config_still_refuses_an_unknown_field(tmp_path: Path) -> None:
    # A typo in a config must stay an error, even in a checkpoint being resumed.
    _checkpoint(Before, before, tmp_path, _advance)
    (config_file,) = tmp_path.glob("step-*/config.ron")
    config_file.write_text(config_file.read_text().replace("lr:", "lrr:"))
    with pytest.raises(hyperstate.ConfigError, match=r"unknown field 'lrr' in Config"):
        _resume(Before, before, tmp_path)


# ---------------------------------------------------------------------------------------
# A field renamed with a Versioned rule


@dataclass
class Named:
    step: int
    model: nn.Module
    opt: torch.optim.Optimizer


@dataclass
class Renamed(hyperstate.Versioned):
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> dict[int, list[Any]]:
        return {0: [RenameField(old_field=("opt",), new_field=("optimizer",))]}


def named(config: Config) -> Named:
    model = _model()
    return Named(0, model, torch.optim.Adam(model.parameters(), lr=config.lr))


def renamed(config: Config) -> Renamed:
    model = _model()
    return Renamed(0, model, torch.optim.Adam(model.parameters(), lr=config.lr))


def _adam_step(state: Named) -> None:
    state.step = 1
    _train(state.model, state.opt)


def test_a_renamed_optimizer_field_resumes_through_a_versioned_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = _checkpoint(Named, named, tmp_path, _adam_step)
    moments = saved.opt.state_dict()["state"][0]
    with (
        caplog.at_level(logging.INFO, logger="hyperstate"),
        _resume(Renamed, renamed, tmp_path) as sm,
    ):
        state = sm.state
        restored = state.optimizer.state_dict()["state"][0]
        assert torch.equal(restored["exp_avg"], moments["exp_avg"])
        assert torch.equal(restored["exp_avg_sq"], moments["exp_avg_sq"])
        assert state.optimizer.param_groups[0]["params"][0] is state.model.weight
        # Training goes on from the restored moments: the same step as the old run's.
        _train(state.model, state.optimizer)
        _train(saved.model, saved.opt)
        assert torch.equal(state.model.weight, saved.model.weight)
        sm.step()
    assert "taken from initial_state" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    newest = max(tmp_path.glob("step-*/state.ron"))
    text = newest.read_text()
    assert text.startswith("Renamed(\n    version: 1,") and "    optimizer: Adam(" in text
    with _resume(Renamed, renamed, tmp_path) as sm:  # the new checkpoint needs no rule
        assert torch.equal(sm.state.model.weight, state.model.weight)


@dataclass
class RenamedWithoutRule:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer


def renamed_without_rule(config: Config) -> RenamedWithoutRule:
    model = _model()
    return RenamedWithoutRule(0, model, torch.optim.Adam(model.parameters(), lr=config.lr))


def test_a_rename_without_a_rule_is_reported_with_a_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _checkpoint(Named, named, tmp_path, _adam_step)
    with (
        caplog.at_level(logging.INFO, logger="hyperstate"),
        _resume(RenamedWithoutRule, renamed_without_rule, tmp_path) as sm,
    ):
        assert sm.state.optimizer.state_dict()["state"] == {}  # a fresh one
    assert "taken from initial_state: optimizer" in caplog.text
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "no longer has, ignored: opt; if one of them was renamed" in warning.getMessage()
    assert "RenameField" in warning.getMessage()


# ---------------------------------------------------------------------------------------
# hyperstate.load with and without initial_state


@dataclass
class Weights:
    step: int
    w: torch.Tensor


@dataclass
class MoreWeights:
    step: int
    w: torch.Tensor
    extra: torch.Tensor
    scale: float = 1.0


@dataclass
class MoreWeightsLazy(hyperstate.Lazy):
    step: int
    w: torch.Tensor
    extra: torch.Tensor


def more_weights(config: Config) -> MoreWeights:
    return MoreWeights(0, torch.zeros(2), torch.full((3,), 4.0), scale=0.5)


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.ron"
    hyperstate.dump(Weights(6, torch.arange(2.0)), path)
    return path


def test_load_with_initial_state_takes_the_added_fields(
    weights_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="hyperstate"):
        state = hyperstate.load(
            MoreWeights, weights_file, ctx={"config": Config()}, initial_state=more_weights
        )
    assert state.step == 6 and torch.equal(state.w, torch.arange(2.0))
    assert torch.equal(state.extra, torch.full((3,), 4.0)) and state.scale == 0.5
    assert f"{weights_file}: fields not in the checkpoint, taken from initial_state: " in (
        caplog.text
    )
    # A ready state object serves too, and a Lazy state reads its old fields on access.
    ready = MoreWeightsLazy(0, torch.zeros(2), torch.ones(1))
    lazy = hyperstate.load(MoreWeightsLazy, weights_file, initial_state=ready)
    assert lazy.extra is ready.extra
    assert torch.equal(lazy.w, torch.arange(2.0))


def test_load_without_initial_state_says_what_is_missing_and_how_to_fix_it(
    weights_file: Path,
) -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(MoreWeights, weights_file)
    message = str(info.value)
    assert (
        f"{weights_file}:1:1: missing required field 'extra' (a torch.Tensor) of MoreWeights; "
        "the checkpoint has no value for it (a field added since it was written?) at extra"
    ) in message
    assert "pass initial_state= (a function of the config, or a state object)" in message
    assert not any(name in message for name in INTERNAL_NAMES)


def test_state_flag_ignores_removed_fields_without_an_initial_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.ron"
    hyperstate.dump(MoreWeights(2, torch.ones(2), torch.zeros(1)), path)
    # Without the flag (or an initial_state) the file is read as strictly as a config.
    with pytest.raises(hyperstate.ConfigError, match="unknown field 'extra' in Weights"):
        hyperstate.load(Weights, path)
    with caplog.at_level(logging.WARNING, logger="hyperstate"):
        state = hyperstate.load(Weights, path, state=True)
    assert state.step == 2 and torch.equal(state.w, torch.ones(2))
    assert "fields of the checkpoint that Weights no longer has, ignored: extra, scale" in (
        caplog.text
    )


@dataclass
class Counted:
    step: int
    seen: int


def test_an_added_plain_field_without_initial_state_is_an_error_for_a_state(
    weights_file: Path,
) -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(Counted, weights_file, state=True)
    message = str(info.value)
    assert "missing required field 'seen' (int) of Counted; the checkpoint has no value" in message
    assert "pass initial_state=" in message


def test_a_stateful_field_without_initial_state_names_the_type(tmp_path: Path) -> None:
    path = tmp_path / "state.ron"
    hyperstate.dump(Before(1, _model()), path)
    with pytest.raises(hyperstate.StateError) as info:
        hyperstate.load(Before, path)
    message = str(info.value)
    assert "model holds a torch.nn.Module (restored in place)" in message
    assert "pass initial_state=" in message
    assert not any(name in message for name in INTERNAL_NAMES)


# ---------------------------------------------------------------------------------------
# Type names in messages


class Tracker(hyperstate.Serializable):
    def serialize(self) -> Any:
        return {}

    @classmethod
    def deserialize(cls, state_dict: Any, ctx: dict[str, Any]) -> Tracker:
        return cls()


@pytest.mark.parametrize(
    ("annotation", "name", "phrase"),
    [
        (torch.Tensor, "torch.Tensor", "a torch.Tensor"),
        (nn.Module, "torch.nn.Module", "a torch.nn.Module (restored in place)"),
        (nn.Linear, "torch.nn.Linear", "a torch.nn.Linear (restored in place)"),
        (
            torch.optim.Optimizer,
            "torch.optim.Optimizer",
            "a torch.optim.Optimizer (restored in place)",
        ),
        (torch.Generator, "torch.Generator", "a torch.Generator (restored in place)"),
        (Tracker, "Tracker", "a Tracker"),
        (list[torch.Tensor], "list[torch.Tensor]", "a list[torch.Tensor]"),
        (torch.Tensor | None, "torch.Tensor | None", "a torch.Tensor or None"),
        (
            hyperstate.Blob[list[float]],
            "Blob[list[float]]",
            "a list[float], stored in a blob file (Blob[...])",
        ),
        (hyperstate.PerRank[int], "PerRank[int]", "a PerRank[int]"),
        (int, "int", "an int"),
    ],
)
def test_type_names_in_messages_are_what_the_user_wrote(
    annotation: Any, name: str, phrase: str
) -> None:
    node = schema_of(annotation)
    assert format_type(node) == name
    assert describe_type(node) == phrase


@dataclass
class Kinds:
    weights: torch.Tensor
    tracker: Tracker


def test_a_bad_value_of_a_state_field_names_its_type() -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.loads(Kinds, "Kinds(weights: 3, tracker: [])")
    message = str(info.value)
    assert "expected a Tensor(...) reference (of a torch.Tensor), found 3" in message
    assert "expected Tracker(state: ...) (a Serializable), found a list of 0 items" in message
    with pytest.raises(hyperstate.ConfigError, match="expected a Tracker, found an int"):
        hyperstate.dumps(Kinds(torch.zeros(()), 3))  # type: ignore[arg-type]
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(Kinds, overrides=["weights=1"])
    assert not any(name in str(info.value) for name in INTERNAL_NAMES)


@dataclass
class Agent:
    name: str


@dataclass
class Team:
    agents: list[Agent]


@dataclass
class AgentAfter:
    name: str
    score: int


@dataclass
class TeamAfter:
    agents: list[AgentAfter]


def test_items_of_a_list_take_the_same_item_of_the_initial_state(tmp_path: Path) -> None:
    path = tmp_path / "state.ron"
    hyperstate.dump(Team([Agent("a"), Agent("b"), Agent("c")]), path)
    initial = TeamAfter([AgentAfter("x", 1), AgentAfter("y", 2), AgentAfter("z", 3)])
    team = hyperstate.load(TeamAfter, path, initial_state=initial)
    assert team == TeamAfter([AgentAfter("a", 1), AgentAfter("b", 2), AgentAfter("c", 3)])
    # An item the initial state does not have: nothing to take, and the error says so.
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(TeamAfter, path, initial_state=TeamAfter([AgentAfter("x", 1)]))
    message = str(info.value)
    assert "2 problems" in message
    assert (
        "missing required field 'score' (int) of AgentAfter; the checkpoint has no value "
        "for it, and the initial state has none there at agents[2].score"
    ) in message


@dataclass
class WithModel:
    model: nn.Module


def test_a_bad_record_of_a_module_names_what_it_restores(tmp_path: Path) -> None:
    path = tmp_path / "state.ron"
    path.write_text("WithModel(model: [1, 2])")
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(WithModel, path, initial_state=WithModel(_model()))
    assert (
        "state.ron:1:18: expected the saved state of a torch.nn.Module (restored in place), "
        "written Module(state: ...), found a list of 2 items at model"
    ) in str(info.value)
