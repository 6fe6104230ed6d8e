"""HyperstateCheckpointIO with a real Lightning Trainer and Fabric on the CPU.

What is checked: every checkpoint Lightning saves goes through the plugin and loads back as
the dict Lightning handed it; a fit SIGKILLed mid-training resumes from ``last`` to the
same bits as an uninterrupted one; a save killed or failed at any moment leaves the path
as it was; values that cannot be written without pickle are refused by their path; the
``hyperstate`` command reads these checkpoints. Lightning's own warnings that do not
concern hyperstate are silenced by their messages (``KNOWN_WARNINGS``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import enum
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_jobs import fit, overwrite
from lightning_jobs.fit import KNOWN_WARNINGS, TinyModel

from hyperstate.errors import BlobError, ConfigError, StateError, StorageError
from hyperstate.integrations.lightning import HyperstateCheckpointIO, load_from_checkpoint
from hyperstate.storage import STATE_FILE, CheckpointStore
from hyperstate.tools import cli

pytestmark = [pytest.mark.filterwarnings(f"ignore:{m}:{c}") for m, c in KNOWN_WARNINGS]

JOBS = Path(__file__).resolve().parent / "lightning_jobs"
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
TIMEOUT = 300  # seconds; generous: only a hang gets there


def assert_same(
    loaded: Any, saved: Any, where: str = "checkpoint", *, as_dict: bool = True
) -> None:
    """``loaded`` is ``saved``: the same types (any mapping as a plain dict, or with
    ``as_dict=False`` as the same type), keys in the same order with the same types, and
    bit-equal tensors of the same dtype and device."""
    if isinstance(saved, torch.Tensor):
        assert type(loaded) is torch.Tensor, where
        assert (loaded.dtype, loaded.shape, loaded.device) == (
            saved.dtype,
            saved.shape,
            saved.device,
        ), where
        assert torch.equal(loaded, saved), where
    elif isinstance(saved, np.ndarray):
        assert type(loaded) is np.ndarray and loaded.dtype == saved.dtype, where
        assert np.array_equal(loaded, saved), where
    elif isinstance(saved, Mapping):
        assert type(loaded) is (dict if as_dict else type(saved)), where
        assert [(type(k), k) for k in loaded] == [(type(k), k) for k in saved], where
        for key, value in saved.items():
            assert_same(loaded[key], value, f"{where}[{key!r}]", as_dict=as_dict)
    elif type(saved) in (list, tuple):
        assert type(loaded) is type(saved) and len(loaded) == len(saved), where
        for i, (a, b) in enumerate(zip(loaded, saved, strict=True)):
            assert_same(a, b, f"{where}[{i}]", as_dict=as_dict)
    elif type(saved) is float:
        assert type(loaded) is float, where
        assert repr(loaded) == repr(saved), where  # NaN, -0.0 and every digit
    else:
        assert type(loaded) is type(saved) and loaded == saved, where


class Recording(HyperstateCheckpointIO):
    """The plugin, keeping a copy of each dict it saved, to compare with what loads."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[str, dict[str, Any]] = {}
        self.saves: collections.Counter[str] = collections.Counter()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        self.saved[os.fspath(path)] = copy.deepcopy(checkpoint)
        self.saves[os.fspath(path)] += 1


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recording, TinyModel]:
    """A fit of 8 steps (2 epochs) with ModelCheckpoint: every 2 steps, the top 2 by step,
    and last.ckpt, all through the plugin: (checkpoint dir, plugin, model)."""
    root = tmp_path_factory.mktemp("fit")
    plugin = Recording()
    callback = ModelCheckpoint(
        dirpath=root / "checkpoints",
        every_n_train_steps=2,
        save_top_k=2,
        monitor="step",
        mode="max",
        save_last=True,
    )
    torch.manual_seed(0)
    model = TinyModel()
    fit.trainer(root, 8, [callback], plugin).fit(model, fit.data())
    return root / "checkpoints", plugin, model


def test_model_checkpoint_saves_and_prunes_through_the_plugin(
    fitted: tuple[Path, Recording, TinyModel],
) -> None:
    checkpoints, plugin, model = fitted
    # Checkpoints of steps 2 and 4 fell out of the top 2: Lightning removed them with
    # remove_checkpoint. last.ckpt was saved at every one of the 4 steps.
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "epoch=1-step=6.ckpt",
        "epoch=1-step=8.ckpt",
        "last.ckpt",
    ]
    assert sorted(Path(p).name for p in plugin.saved) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
        "epoch=1-step=6.ckpt",
        "epoch=1-step=8.ckpt",
        "last.ckpt",
    ]
    assert plugin.saves[str(checkpoints / "last.ckpt")] == 4  # overwritten 3 times
    for name, step in [("epoch=1-step=6.ckpt", 6), ("epoch=1-step=8.ckpt", 8), ("last.ckpt", 8)]:
        store = CheckpointStore(checkpoints / name)
        infos = store.list()
        assert [info.number for info in infos] == [step]
        assert sorted(p.name for p in (checkpoints / name).iterdir()) == [f"step-{step:012d}"]
        assert store.verify(infos[0]) == []
        loaded = HyperstateCheckpointIO().load_checkpoint(checkpoints / name)
        assert_same(loaded, plugin.saved[str(checkpoints / name)])
    last = HyperstateCheckpointIO().load_checkpoint(checkpoints / "last.ckpt")
    assert last["global_step"] == 8
    assert_same(last["state_dict"], model.state_dict())
    adamw = last["optimizer_states"][0]
    assert list(adamw["state"]) == [0, 1, 2, 3]  # by parameter index, ints
    assert adamw["param_groups"][0]["betas"] == (0.9, 0.999)
    callback_keys = list(last["callbacks"])
    assert len(callback_keys) == 1 and callback_keys[0].startswith("ModelCheckpoint{'monitor': ")
    assert last["hyper_parameters"] == {"lr": 0.05, "width": 4}


def test_state_ron_is_readable_text(fitted: tuple[Path, Recording, TinyModel]) -> None:
    checkpoints, _, _ = fitted
    [info] = CheckpointStore(checkpoints / "last.ckpt").list()
    text = Path(info.path, STATE_FILE).read_text()
    for line in [
        '    "global_step": 8,',
        '        "lr": 0.05,',
        '                    "betas": (0.9, 0.999),',
        "                0: {",
        '        "net.0.weight": Tensor(',
        '            file: "blobs/rank-00000.safetensors",',
    ]:
        assert f"\n{line}\n" in text, line


def test_sigkilled_fit_resumes_from_last_to_the_same_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(JOBS / "fit.py"), str(tmp_path / "run"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)

    # 3 epochs of 4 steps, a checkpoint at the end of each; killed in the middle of the
    # second epoch, after the checkpoint of step 4.
    killed = run("--max-steps", "12", "--kill-at-step", "6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout.splitlines()[-1] == "killed at step 6"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert [info.number for info in CheckpointStore(last).list()] == [4]
    resumed = run("--max-steps", "12", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert HyperstateCheckpointIO().load_checkpoint(last)["global_step"] == 12

    # The same job, uninterrupted, here (one process fewer to start).
    threads = torch.get_num_threads()
    try:
        fit.main([str(tmp_path / "clean"), "--max-steps", "12"])
    finally:
        torch.set_num_threads(threads)
    expected = capsys.readouterr().out.splitlines()[-1]
    assert expected.startswith("weights ")
    assert resumed.stdout.splitlines()[-1] == expected


def test_a_save_killed_at_any_moment_leaves_the_path_whole(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    rng = random.Random(0)
    newest = 0
    for _ in range(2):
        child = subprocess.Popen(
            [sys.executable, str(JOBS / "overwrite.py"), str(path), str(newest + 1)],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.6))  # random moments; nothing is timed
        finally:
            child.kill()
            child.wait(TIMEOUT)
            if child.stdout is not None:
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        # Lightning looks for checkpoints by name: nothing but the path may look like one.
        assert {p.name for p in tmp_path.iterdir()} <= {"last.ckpt", ".last.ckpt.hyperstate-tmp"}
        if not path.exists():
            assert newest == 0  # killed in the very first save; once there, it stays
            continue
        loaded = HyperstateCheckpointIO().load_checkpoint(path)
        step = loaded["global_step"]
        assert step >= max(newest, 1)
        assert_same(loaded, overwrite.version(step))  # one version, whole
        newest = step
    # The next save clears whatever a killed one left.
    HyperstateCheckpointIO().save_checkpoint(overwrite.version(newest + 1), path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert [p.name for p in path.iterdir()] == [f"step-{newest + 1:012d}"]


class Activation:
    """Something a user may pass to ``__init__``: not a value hyperstate writes."""


def test_a_failed_save_leaves_what_was_there(tmp_path: Path) -> None:
    plugin = HyperstateCheckpointIO()
    path = tmp_path / "last.ckpt"
    first = {"global_step": 1, "state_dict": {"w": torch.arange(4.0)}}
    refused = {"global_step": 2, "hyper_parameters": {"act": Activation()}}
    with pytest.raises(ConfigError, match=r"at hyper_parameters\.act"):
        plugin.save_checkpoint(refused, path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    # Fails while the blobs are written, after the new directory was begun.
    failing = {"global_step": 2, "state_dict": {"w": torch.empty(4, device="meta")}}
    with pytest.raises(BlobError, match=r"state_dict\.w"):
        plugin.save_checkpoint(failing, path)
    assert list(tmp_path.iterdir()) == []

    plugin.save_checkpoint(first, path)
    for bad in (refused, failing):
        with pytest.raises((ConfigError, BlobError)):
            plugin.save_checkpoint(bad, path)
        assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
        assert [p.name for p in path.iterdir()] == ["step-000000000001"]
        assert_same(plugin.load_checkpoint(path), first)


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Optim:
    lr: float = 0.1


Pair = collections.namedtuple("Pair", "a b")


def _holds_itself() -> list[Any]:
    box: list[Any] = []
    box.append(box)
    return box


@pytest.mark.parametrize(
    ("checkpoint", "where", "hint"),
    [
        ({"hyper_parameters": {"act": Activation()}}, "hyper_parameters.act", "ignore=['act']"),
        ({"hyper_parameters": {"c": Color.RED}}, "hyper_parameters.c", "save its .value"),
        ({"x": [Path("data")]}, "x[0]", "save str(path)"),
        ({"x": Optim()}, "x", "dataclasses.asdict"),
        ({"x": Pair(1, 2)}, "x", "._asdict()"),
        ({"x": torch.Size([2, 3])}, "x", "save tuple(...)"),
        ({"hyper_parameters": {"dtype": torch.bfloat16}}, "hyper_parameters.dtype", "str(...)"),
        ({"x": np.float64(1.5)}, "x", ".item()"),
        ({"x": {1, 2}}, "x", "sorted(...)"),
        ({"callbacks": {"Saver{'k': 1}": {"f": print}}}, "callbacks[\"Saver{'k': 1}\"].f", None),
        ({"x": {Color.RED: 1}}, "x[RED]", None),
        ({"x": _holds_itself()}, "x[0]", None),
    ],
    ids=[
        "object",
        "enum",
        "path",
        "dataclass",
        "namedtuple",
        "torch-size",
        "dtype",
        "numpy-scalar",
        "set",
        "function",
        "enum-key",
        "cycle",
    ],
)
def test_what_cannot_be_written_without_pickle_is_refused_by_path(
    tmp_path: Path, checkpoint: dict[str, Any], where: str, hint: str | None
) -> None:
    with pytest.raises(ConfigError) as raised:
        HyperstateCheckpointIO().save_checkpoint(checkpoint, tmp_path / "x.ckpt")
    message = str(raised.value)
    assert f" at {where}" in message, message
    assert "nothing was saved" in message
    if hint is not None:
        assert hint in message
    assert list(tmp_path.iterdir()) == []


def test_a_dict_nested_deeper_than_ron_reads_is_refused_not_a_recursion_error(
    tmp_path: Path,
) -> None:
    from hyperstate import ron

    deep: list[Any] = []
    inner = deep
    for _ in range(ron.MAX_DEPTH + 10):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ConfigError, match=f"expected at most {ron.MAX_DEPTH} levels of nesting"):
        HyperstateCheckpointIO().save_checkpoint({"x": deep}, tmp_path / "x.ckpt")
    assert list(tmp_path.iterdir()) == []


class WithActivation(TinyModel):
    def __init__(self, act: Any = None, lr: float = 0.05, width: int = 4) -> None:
        super().__init__(lr, width)


def test_a_fit_with_unwritable_hyperparameters_fails_at_its_first_checkpoint(
    tmp_path: Path,
) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1)
    trainer = fit.trainer(tmp_path, 2, [callback])
    with pytest.raises(ConfigError, match=r"Activation .* at hyper_parameters\.act"):
        trainer.fit(WithActivation(act=Activation()), fit.data())
    assert trainer.global_step == 1
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_plain_values_and_tensors_come_back_as_they_were(tmp_path: Path) -> None:
    weight = torch.randn(3, 2)
    checkpoint = {
        "pytorch-lightning_version": "2.6.6",
        "global_step": 7,
        "state_dict": collections.OrderedDict(w=weight, tied=weight, view=weight.t()),
        "optimizer_states": [{"state": {0: {"step": torch.tensor(7.0)}, 1: {}}, "betas": (0.9,)}],
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {"best": None}},
        "keys": {-1: "int", 2.5: "float", True: "bool", None: "none", (1, "a"): "tuple"},
        "numbers": [0, -(2**70), 1.5, math.nan, -math.inf, -0.0, 5e-324],
        "text": ['"quoted"\n', "", "é😀", b"\x00\xff"],
        "empty": [{}, [], ()],
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "half": torch.ones(2, dtype=torch.bfloat16),
        "complex": torch.ones(2, dtype=torch.complex64),
        "flag": False,
    }
    path = tmp_path / "all.ckpt"
    HyperstateCheckpointIO().save_checkpoint(checkpoint, path)
    loaded = HyperstateCheckpointIO().load_checkpoint(path)
    assert_same(loaded, checkpoint)
    state_dict = loaded["state_dict"]
    # Tensors that shared memory share it again.
    assert state_dict["tied"].data_ptr() == state_dict["w"].data_ptr()
    assert state_dict["view"].untyped_storage().data_ptr() == state_dict["w"].data_ptr()
    assert [info.number for info in CheckpointStore(path).list()] == [7]


def test_any_fsspec_url() -> None:
    """Where a directory cannot be renamed (here memory://), saves go straight in place."""
    plugin = HyperstateCheckpointIO()
    url = f"memory://lightning-{os.getpid()}-{time.monotonic_ns()}/last.ckpt"
    for step in (2, 4):
        plugin.save_checkpoint({"global_step": step, "w": torch.full((3,), float(step))}, url)
    [info] = CheckpointStore(url).list()
    assert info.number == 4
    assert_same(plugin.load_checkpoint(url), {"global_step": 4, "w": torch.full((3,), 4.0)})
    plugin.remove_checkpoint(url)
    with pytest.raises(StorageError, match="no such checkpoint directory"):
        plugin.load_checkpoint(url)


def test_map_location_puts_every_tensor_there(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    HyperstateCheckpointIO().save_checkpoint({"w": torch.ones(3), "step": torch.tensor(3.0)}, path)
    for where in ("meta", torch.device("meta")):
        loaded = HyperstateCheckpointIO().load_checkpoint(path, map_location=where)
        assert {t.device.type for t in loaded.values()} == {"meta"}
    with pytest.raises(StateError, match="expected map_location to be a device"):
        HyperstateCheckpointIO().load_checkpoint(path, map_location=lambda s, loc: s)


def test_load_from_checkpoint(fitted: tuple[Path, Recording, TinyModel]) -> None:
    checkpoints, _, model = fitted
    last = checkpoints / "last.ckpt"
    loaded = load_from_checkpoint(TinyModel, last)
    assert type(loaded) is TinyModel
    assert_same(loaded.state_dict(), model.state_dict(), as_dict=False)
    assert dict(loaded.hparams) == {"lr": 0.05, "width": 4}
    assert load_from_checkpoint(TinyModel, last, lr=0.5).hparams["lr"] == 0.5
    # Lightning's own classmethod opens the path with torch.load, not through the plugin:
    # the documented reason for the function above.
    with pytest.raises(IsADirectoryError):
        TinyModel.load_from_checkpoint(last)


def test_fabric_saves_and_loads_through_the_plugin(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[HyperstateCheckpointIO()])
    torch.manual_seed(0)

    def make() -> tuple[Any, Any]:
        module = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        return fabric.setup(module, optimizer)

    model, optimizer = make()
    for _ in range(3):
        fabric.backward(model(torch.randn(8, 4)).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path / "fabric.ckpt"
    fabric.save(path, {"model": model, "optimizer": optimizer, "step": 3, "note": "x"})

    model2, optimizer2 = make()
    state: dict[str, Any] = {"model": model2, "optimizer": optimizer2, "step": 0}
    assert fabric.load(path, state) == {"note": "x"}
    assert state["step"] == 3
    assert_same(model2.state_dict(), model.state_dict(), as_dict=False)
    assert_same(optimizer2.state_dict(), optimizer.state_dict(), as_dict=False)


def test_a_link_is_replaced_or_removed_and_its_target_left_alone(tmp_path: Path) -> None:
    plugin = HyperstateCheckpointIO()
    target, link = tmp_path / "epoch=0-step=2.ckpt", tmp_path / "last.ckpt"
    plugin.save_checkpoint({"global_step": 2}, target)
    link.symlink_to(target.name)  # what ModelCheckpoint(save_last="link") makes
    assert plugin.load_checkpoint(link)["global_step"] == 2
    plugin.save_checkpoint({"global_step": 4}, link)
    assert not link.is_symlink()
    assert plugin.load_checkpoint(link)["global_step"] == 4
    assert plugin.load_checkpoint(target)["global_step"] == 2
    assert [p.name for p in target.iterdir()] == ["step-000000000002"]
    # Removing a link removes the link, not the checkpoint it points to.
    plugin.remove_checkpoint(link)
    link.symlink_to(target.name)
    plugin.remove_checkpoint(link)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert plugin.load_checkpoint(target)["global_step"] == 2


def test_remove_checkpoint(tmp_path: Path) -> None:
    plugin = HyperstateCheckpointIO()
    path = tmp_path / "epoch=0-step=2.ckpt"
    plugin.save_checkpoint({"global_step": 2, "w": torch.ones(2)}, path)
    plugin.save_checkpoint({"global_step": 4, "w": torch.ones(2)}, path)
    plugin.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []
    plugin.remove_checkpoint(path)  # nothing there: nothing to do
    path.write_bytes(b"PK\x03\x04 a torch.save file")  # from before the plugin was used
    plugin.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


def test_loading_what_is_not_a_checkpoint_says_what_it_found(tmp_path: Path) -> None:
    plugin = HyperstateCheckpointIO()
    with pytest.raises(StorageError, match="no such checkpoint directory"):
        plugin.load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "file.ckpt").write_bytes(b"PK\x03\x04")
    with pytest.raises(StorageError, match="found a file"):
        plugin.load_checkpoint(tmp_path / "file.ckpt")
    with pytest.raises(StorageError, match="found a file"):
        plugin.save_checkpoint({"w": torch.ones(1)}, tmp_path / "file.ckpt")
    # A save that never committed (killed in place on a filesystem without renames).
    (tmp_path / "cut.ckpt" / "step-000000000003").mkdir(parents=True)
    with pytest.raises(StorageError, match=r"found none \(1 uncommitted"):
        plugin.load_checkpoint(tmp_path / "cut.ckpt")
    with pytest.raises(StorageError, match="expected storage_options=None"):
        plugin.save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"anon": True})


def test_a_hand_edit_loads_and_corruption_is_caught(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = HyperstateCheckpointIO()
    path = tmp_path / "last.ckpt"
    plugin.save_checkpoint({"lr": 0.1, "w": torch.arange(1000.0)}, path)
    [info] = CheckpointStore(path).list()
    state = Path(info.path, STATE_FILE)
    state.write_text(state.read_text().replace('"lr": 0.1,', '"lr": 0.02,  // by hand'))
    with caplog.at_level(logging.WARNING, logger="hyperstate"):
        assert plugin.load_checkpoint(path)["lr"] == 0.02
    assert "edited since it was committed" in caplog.text
    blob = Path(info.path, "blobs", "rank-00000.safetensors")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(BlobError, match="checksum"):
        plugin.load_checkpoint(path)


def test_the_hyperstate_command_reads_lightning_checkpoints(
    fitted: tuple[Path, Recording, TinyModel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints, _, model = fitted
    last, older = str(checkpoints / "last.ckpt"), str(checkpoints / "epoch=1-step=6.ckpt")
    assert cli.main(["show", last, "hyper_parameters"]) == 0
    assert capsys.readouterr().out == "hyper_parameters: {2 entries}\n  lr: 0.05\n  width: 4\n"
    assert cli.main(["show", last, "optimizer_states[0].state[1]"]) == 0
    shown = capsys.readouterr().out
    assert "exp_avg: Tensor float32[8] 32 B" in shown and "step: Tensor float32 = 8.0" in shown
    assert cli.main(["verify", last]) == 0
    assert capsys.readouterr().out.startswith(f"ok {last}/step-000000000008 ")
    assert cli.main(["diff", older, last]) == 0
    differences = capsys.readouterr().out.splitlines()
    assert differences[0] == "~ global_step: 6 -> 8"
    assert "~ optimizer_states[0].state[0].step: Tensor float32 = 6.0 -> Tensor float32 = 8.0" in (
        differences
    )
    # Export to a torch.save file: stock Lightning loads that, with weights_only.
    exported = tmp_path / "exported.ckpt"
    assert cli.main(["convert", last, str(exported)]) == 0
    capsys.readouterr()
    exported_model = TinyModel.load_from_checkpoint(exported)
    assert_same(exported_model.state_dict(), model.state_dict(), as_dict=False)
    # The console script, as a user runs it.
    script = Path(sys.executable).with_name("hyperstate")
    done = subprocess.run(
        [str(script), "verify", last], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0 and done.stdout.startswith("ok "), done.stderr
    done = subprocess.run(
        [str(script), "show", last, "global_step"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0 and done.stdout == "global_step: 8\n", done.stderr


def test_a_torch_save_checkpoint_of_lightning_moves_over(tmp_path: Path) -> None:
    """docs/integrations.md: a checkpoint Lightning wrote with torch.save, read with
    weights_only, saved through the plugin, resumes a fit."""
    from lightning.pytorch import Trainer

    from hyperstate.tools.convert import read_torch_save

    torch.manual_seed(0)
    plain = Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    plain.fit(TinyModel(), fit.data())
    plain.save_checkpoint(tmp_path / "plain.ckpt")  # Lightning's TorchCheckpointIO
    saved = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    HyperstateCheckpointIO().save_checkpoint(
        read_torch_save(str(tmp_path / "plain.ckpt")), tmp_path / "moved.ckpt"
    )
    assert_same(HyperstateCheckpointIO().load_checkpoint(tmp_path / "moved.ckpt"), saved)
    resumed = fit.trainer(tmp_path, 8, [])
    resumed.fit(TinyModel(), fit.data(), ckpt_path=tmp_path / "moved.ckpt")
    assert resumed.global_step == 8


def test_import_hyperstate_imports_no_lightning() -> None:
    code = (
        "import sys, hyperstate, hyperstate.integrations; "
        "print(sorted(m for m in ('lightning', 'torch') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=ENV
    )
    assert done.stdout.strip() == "[]", done.stderr
