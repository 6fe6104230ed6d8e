"""Program state: tensors, Serializable, stateful torch objects, Blob[T], Lazy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import hyperstate
from hyperstate.errors import ConfigError, ParseError, StateError
from hyperstate.tensors.safetensors import BlobError


@dataclass
class Config:
    inputs: int = 3


class LinearRegression(nn.Module, hyperstate.Serializable):
    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(x)

    def serialize(self) -> Any:
        return self.state_dict()

    @classmethod
    def deserialize(cls, state_dict: Any, ctx: dict[str, Any]) -> LinearRegression:
        net = cls(ctx["config"].inputs)
        net.load_state_dict(state_dict)
        return net


@dataclass
class SerializableState:
    net: LinearRegression


def test_the_serializable_example(tmp_path: Path) -> None:
    config = Config(inputs=4)
    hyperstate.dump(config, tmp_path / "config.ron")
    state = SerializableState(net=LinearRegression(4))
    hyperstate.dump(state, tmp_path / "state.ron")

    config = hyperstate.load(Config, tmp_path / "config.ron")
    loaded = hyperstate.load(SerializableState, tmp_path / "state.ron", ctx={"config": config})
    assert isinstance(loaded.net, LinearRegression)
    for a, b in zip(loaded.net.parameters(), state.net.parameters(), strict=True):
        assert torch.equal(a, b)
    text = (tmp_path / "state.ron").read_text()
    assert "LinearRegression(" in text and 'key: "net.fc1.weight"' in text


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


@dataclass
class TrainState:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    rng: torch.Generator


def initial_state(config: Config | None) -> TrainState:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return TrainState(0, model, optimizer, scheduler, torch.Generator().manual_seed(1))


def train_step(state: TrainState) -> float:
    x = torch.randn(32, 8, generator=state.rng)
    loss = (state.model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    return loss.item()


def test_model_and_optimizer_restored_mid_training_give_identical_next_loss(
    tmp_path: Path,
) -> None:
    state = initial_state(None)
    for _ in range(5):
        train_step(state)
    hyperstate.dump(state, tmp_path / "state.ron")
    expected = [train_step(state) for _ in range(3)]

    restored = hyperstate.load(TrainState, tmp_path / "state.ron", initial_state=initial_state)
    assert restored.step == 5
    assert [train_step(restored) for _ in range(3)] == expected


def test_optimizer_hyperparameters_are_readable_and_editable_text(tmp_path: Path) -> None:
    state = initial_state(None)
    train_step(state)
    hyperstate.dump(state, tmp_path / "state.ron")
    text = (tmp_path / "state.ron").read_text()
    assert '"lr": 0.01,' in text and '"weight_decay": 0.1,' in text
    assert '"betas": (0.9, 0.999),' in text
    # Adam's step counters are 0-d tensors: written inline, readable.
    assert '"step": Tensor(' in text and "value: 1.0" in text
    (tmp_path / "state.ron").write_text(text.replace('"lr": 0.01,', '"lr": 0.003,', 1))
    restored = hyperstate.load(TrainState, tmp_path / "state.ron", initial_state=initial_state)
    assert restored.optimizer.param_groups[0]["lr"] == 0.003


@dataclass
class Tensors:
    by_name: dict[str, torch.Tensor]
    arrays: list[np.ndarray]
    a: torch.Tensor
    b: torch.Tensor
    view: torch.Tensor


ALL_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


def test_every_dtype_shape_and_tied_tensors_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    by_name = {
        str(dtype).removeprefix("torch."): (torch.randn(3, 5, generator=gen) * 50).to(dtype)
        for dtype in ALL_DTYPES
    }
    by_name["empty"] = torch.zeros(0, 4)
    by_name["scalar"] = torch.tensor(2.5)
    by_name["strided"] = torch.arange(40.0).reshape(5, 8)[::2, 1::3]
    shared = torch.arange(12.0).reshape(3, 4)
    value = Tensors(
        by_name=by_name,
        arrays=[np.arange(6, dtype=np.int16).reshape(2, 3), np.linspace(0, 1, 5)],
        a=shared,
        b=shared,  # the same tensor twice: tied weights
        view=shared.t(),  # another view of the same storage
    )
    hyperstate.dump(value, tmp_path / "state.ron")
    loaded = hyperstate.load(Tensors, tmp_path / "state.ron")
    for name, tensor in by_name.items():
        got = loaded.by_name[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name
    for got_array, array in zip(loaded.arrays, value.arrays, strict=True):
        assert got_array.dtype == array.dtype and np.array_equal(got_array, array)
    assert loaded.a is loaded.b
    loaded.a[0, 1] = 100.0
    assert loaded.view[1, 0] == 100.0  # still one storage after load


@dataclass
class WithBlob:
    name: str
    history: hyperstate.Blob[list[float]]


def test_blob_fields_are_opaque_in_the_text(tmp_path: Path) -> None:
    value = WithBlob("run", [0.5, 0.25, 0.125] * 100)
    hyperstate.dump(value, tmp_path / "state.ron")
    text = (tmp_path / "state.ron").read_text()
    assert "0.125" not in text and "Blob(" in text
    assert hyperstate.load(WithBlob, tmp_path / "state.ron") == value


class Embedding(hyperstate.Serializable):
    def __init__(self, weight: torch.Tensor, width: int) -> None:
        self.weight = weight
        self.width = width

    def serialize(self) -> Any:
        return {"weight": self.weight}

    @classmethod
    def deserialize(cls, state_dict: Any, ctx: dict[str, Any]) -> Embedding:
        return cls(state_dict["weight"], ctx["state"].width)


@dataclass
class LazyState(hyperstate.Lazy):
    width: int
    big: torch.Tensor
    embedding: Embedding


def test_lazy_fields_load_on_first_access_and_may_read_other_fields(tmp_path: Path) -> None:
    value = LazyState(7, torch.randn(256, 256), Embedding(torch.ones(3), 7))
    hyperstate.dump(value, tmp_path / "state.ron")
    loaded = hyperstate.load(LazyState, tmp_path / "state.ron")
    assert loaded.width == 7
    # Nothing blob-backed was read yet: corrupting the blob file now is only noticed
    # when a field is touched.
    blob = tmp_path / "blobs" / "rank-00000.safetensors"
    intact = blob.read_bytes()
    corrupted = bytearray(intact)
    corrupted[len(intact) // 2] ^= 0xFF  # inside `big`, the largest entry
    blob.write_bytes(bytes(corrupted))
    with pytest.raises(BlobError, match=r"rank-00000\.safetensors"):
        _ = loaded.big
    blob.write_bytes(intact)
    loaded = hyperstate.load(LazyState, tmp_path / "state.ron")
    assert loaded.embedding.width == 7  # deserialize read `width` through ctx["state"]
    assert torch.equal(loaded.big, value.big)


@dataclass
class ManyTensors(hyperstate.Lazy):
    step: int
    tensors: dict[str, torch.Tensor]
    extra: list[torch.Tensor] = field(default_factory=list)


def test_lazy_field_text_is_parsed_on_first_access(tmp_path: Path) -> None:
    value = ManyTensors(3, {f"t{i}": torch.full((2,), float(i)) for i in range(5)})
    hyperstate.dump(value, tmp_path / "state.ron")
    text = (tmp_path / "state.ron").read_text()
    # A syntax error inside the text of a lazy field, with its brackets balanced.
    broken = text.replace("shape: (2,),", "shape: (2,) 7,", 1)
    (tmp_path / "state.ron").write_text(broken)
    loaded = hyperstate.load(ManyTensors, tmp_path / "state.ron")
    assert loaded.step == 3 and loaded.extra == []  # the other fields load
    line = next(i for i, s in enumerate(broken.splitlines(), 1) if "(2,) 7" in s)
    with pytest.raises(ParseError) as info:
        _ = loaded.tensors
    assert (info.value.line, info.value.col) == (line, broken.splitlines()[line - 1].index("7") + 1)
    assert "state.ron" in str(info.value)
    # Unbalanced brackets are found when the file is opened.
    (tmp_path / "state.ron").write_text(text.replace("shape: (2,),", "shape: (2,,", 1))
    with pytest.raises(ParseError):
        hyperstate.load(ManyTensors, tmp_path / "state.ron")
    (tmp_path / "state.ron").write_text(text)
    loaded = hyperstate.load(ManyTensors, tmp_path / "state.ron")
    assert all(torch.equal(loaded.tensors[k], v) for k, v in value.tensors.items())


def test_bad_reference_in_a_lazy_field_names_its_place(tmp_path: Path) -> None:
    hyperstate.dump(ManyTensors(3, {"a": torch.ones(2), "b": torch.ones(2)}), tmp_path / "s.ron")
    text = (tmp_path / "s.ron").read_text()
    (tmp_path / "s.ron").write_text(text.replace('"b": Tensor(', '"b": Tonsor(', 1))
    loaded = hyperstate.load(ManyTensors, tmp_path / "s.ron")
    with pytest.raises(ConfigError) as info:
        _ = loaded.tensors
    line = next(i for i, s in enumerate(text.splitlines(), 1) if '"b": Tensor(' in s)
    assert f"s.ron:{line}:14" in str(info.value)


def test_lazy_state_with_override_into_a_lazy_field(tmp_path: Path) -> None:
    hyperstate.dump(ManyTensors(3, {"a": torch.ones(2)}), tmp_path / "state.ron")
    loaded = hyperstate.load(ManyTensors, tmp_path / "state.ron", overrides=["step=4", "extra=[]"])
    assert loaded.step == 4 and torch.equal(loaded.tensors["a"], torch.ones(2))


@dataclass
class ReadsInPostInit(hyperstate.Lazy):
    tensors: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        self.total = float(sum(t.sum() for t in self.tensors.values()))


def test_lazy_field_read_while_the_state_is_built(tmp_path: Path) -> None:
    hyperstate.dump(ReadsInPostInit({"a": torch.ones(2), "b": torch.ones(3)}), tmp_path / "s.ron")
    assert hyperstate.load(ReadsInPostInit, tmp_path / "s.ron").total == 5.0


class Chicken(hyperstate.Serializable):
    def serialize(self) -> Any:
        return {"x": torch.zeros(1)}

    @classmethod
    def deserialize(cls, state_dict: Any, ctx: dict[str, Any]) -> Chicken:
        _ = ctx["state"].egg
        return cls()


class Egg(hyperstate.Serializable):
    def serialize(self) -> Any:
        return {"x": torch.zeros(1)}

    @classmethod
    def deserialize(cls, state_dict: Any, ctx: dict[str, Any]) -> Egg:
        _ = ctx["state"].chicken
        return cls()


@dataclass
class Cyclic(hyperstate.Lazy):
    chicken: Chicken
    egg: Egg


def test_lazy_cycle_is_a_clear_error(tmp_path: Path) -> None:
    hyperstate.dump(Cyclic(Chicken(), Egg()), tmp_path / "state.ron")
    loaded = hyperstate.load(Cyclic, tmp_path / "state.ron")
    with pytest.raises(
        StateError, match="cycle while loading lazy fields: chicken -> egg -> chicken"
    ):
        _ = loaded.chicken


def test_corruption_is_reported_with_file_and_entry(tmp_path: Path) -> None:
    hyperstate.dump(
        Tensors({}, [], torch.ones(100), torch.zeros(3), torch.zeros(2)), tmp_path / "s.ron"
    )
    blob = next((tmp_path / "blobs").iterdir())
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(BlobError) as info:
        hyperstate.load(Tensors, tmp_path / "s.ron")
    assert blob.name in str(info.value)


def test_references_cannot_leave_the_checkpoint_directory(tmp_path: Path) -> None:
    hyperstate.dump(
        Tensors({}, [], torch.ones(4), torch.zeros(3), torch.zeros(2)), tmp_path / "state.ron"
    )
    text = (tmp_path / "state.ron").read_text()
    for evil in ("../outside.safetensors", "/etc/passwd", "blobs/../../x.safetensors"):
        (tmp_path / "evil.ron").write_text(text.replace("blobs/rank-00000.safetensors", evil))
        with pytest.raises(BlobError, match="checkpoint directory"):
            hyperstate.load(Tensors, tmp_path / "evil.ron")


def test_a_pickle_in_place_of_a_blob_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (marker.write_text, ("ran",))

    hyperstate.dump(
        Tensors({}, [], torch.ones(4), torch.zeros(3), torch.zeros(2)), tmp_path / "state.ron"
    )
    blob = tmp_path / "blobs" / "rank-00000.safetensors"
    torch.save({"x": Evil()}, blob)  # a pickle where a safetensors file should be
    with pytest.raises(BlobError):
        hyperstate.load(Tensors, tmp_path / "state.ron")
    assert not marker.exists()


def test_tensors_need_a_path_to_dump() -> None:
    with pytest.raises(StateError, match="needs a path"):
        hyperstate.dumps(Tensors({}, [], torch.ones(4), torch.zeros(3), torch.zeros(2)))


def test_stateful_field_without_initial_state_is_a_clear_error(tmp_path: Path) -> None:
    hyperstate.dump(initial_state(None), tmp_path / "state.ron")
    with pytest.raises(StateError, match="initial_state="):
        hyperstate.load(TrainState, tmp_path / "state.ron")


def test_state_on_fsspec_memory(tmp_path: Path) -> None:
    state = initial_state(None)
    train_step(state)
    hyperstate.dump(state, "memory://state-test/run/state.ron")
    expected = train_step(state)
    restored = hyperstate.load(
        TrainState, "memory://state-test/run/state.ron", initial_state=initial_state
    )
    assert train_step(restored) == expected


@dataclass
class Holder:
    values: list[int] = field(default_factory=list)


def test_configs_without_tensors_write_no_blob_files(tmp_path: Path) -> None:
    hyperstate.dump(Holder([1, 2]), tmp_path / "state.ron")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.ron"]


def test_inline_scalar_dtype_names_are_not_looked_up(tmp_path: Path) -> None:
    @dataclass
    class Scalar:
        x: torch.Tensor

    hyperstate.dump(Scalar(torch.tensor(3.0)), tmp_path / "state.ron")
    text = (tmp_path / "state.ron").read_text()
    assert 'dtype: "float32",\n        value: 3.0,' in text
    (tmp_path / "state.ron").write_text(text.replace('"float32"', '"load"'))
    with pytest.raises(hyperstate.ConfigError, match="expected a dtype among float64"):
        hyperstate.load(Scalar, tmp_path / "state.ron")


@dataclass
class ScalerState:
    scaler: torch.amp.GradScaler


def test_grad_scaler_state_is_restored_into_the_initial_object(tmp_path: Path) -> None:
    def fresh(config: Any) -> ScalerState:
        return ScalerState(torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7))

    state = fresh(None)
    state.scaler.scale(torch.ones(1))  # creates the scale tensor, as a training step does
    state.scaler.update(new_scale=256.0)
    hyperstate.dump(state, tmp_path / "state.ron")
    text = (tmp_path / "state.ron").read_text()
    assert '"scale": 256.0,' in text and '"growth_interval": 7,' in text
    restored = hyperstate.load(ScalerState, tmp_path / "state.ron", initial_state=fresh)
    assert restored.scaler.get_scale() == 256.0


@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr", "nested"])
def test_a_tensor_that_is_not_dense_is_refused_at_its_path(tmp_path: Path, layout: str) -> None:
    import warnings

    with warnings.catch_warnings():  # torch calls CSR and nested tensors beta / prototype
        warnings.simplefilter("ignore", UserWarning)
        if layout == "nested":
            tensor = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
        else:
            tensor = (
                torch.eye(3).to_sparse() if layout == "sparse_coo" else torch.eye(3).to_sparse_csr()
            )

    @dataclass
    class Holder:
        weights: dict[str, torch.Tensor]

    with pytest.raises(hyperstate.ConfigError, match=r"expected a dense \(strided\) tensor") as e:
        hyperstate.dump(Holder({"w": tensor}), tmp_path / "state.ron")
    assert "weights.w" in str(e.value)
    assert not (tmp_path / "state.ron").exists()
