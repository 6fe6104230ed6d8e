"""Configs and states on S3: ``hyperstate.dump``/``load`` with ``s3://`` URLs.

S3 is moto's server on 127.0.0.1 (see conftest.py), reached over HTTP by the real s3fs.
Reading one field of a lazy state must fetch only that entry's byte range of the blob
file: a subclass of s3fs, registered under its own protocol, records every GetObject.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import fsspec
import pytest
import s3fs
import torch
from config_base import Mode
from test_state import TrainState, initial_state, train_step

import hyperstate
from hyperstate import _fs


@dataclass
class OptimizerConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class RunConfig:
    name: str = "run"
    mode: Mode = Mode.FAST
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    layers: list[int] = field(default_factory=lambda: [64, 64])
    tags: dict[str, int] = field(default_factory=dict)


def test_config_dump_and_load(s3_bucket: str) -> None:
    url = f"{s3_bucket}/run/config.ron"
    config = RunConfig("s3", Mode.SLOW, OptimizerConfig(lr=0.01), [8], {"a": 1})
    text = hyperstate.dump(config, url)
    assert _fs.read_text(url) == text + "\n"
    assert hyperstate.load(RunConfig, url) == config
    loaded = hyperstate.load(RunConfig, url, overrides=["optimizer.lr=0.5"])
    assert loaded.optimizer.lr == 0.5 and loaded.layers == [8]
    # Overwriting is a whole new object: readers see the old text or the new one.
    hyperstate.dump(RunConfig("again"), url)
    assert hyperstate.load(RunConfig, url).name == "again"
    fs, path = _fs.url_to_fs(f"{s3_bucket}/run")
    assert fs.ls(path, detail=False) == [f"{path}/config.ron"]


def test_train_state_restored_from_s3_gives_identical_next_loss(s3_bucket: str) -> None:
    state = initial_state(None)
    for _ in range(3):
        train_step(state)
    url = f"{s3_bucket}/run/state.ron"
    hyperstate.dump(state, url)
    expected = [train_step(state) for _ in range(2)]

    fs, path = _fs.url_to_fs(f"{s3_bucket}/run")
    assert sorted(fs.find(path)) == [
        f"{path}/blobs/rank-00000.safetensors",
        f"{path}/state.ron",
    ]
    restored = hyperstate.load(TrainState, url, initial_state=initial_state)
    assert restored.step == 3
    assert [train_step(restored) for _ in range(2)] == expected


# -- byte ranges of lazy loads ------------------------------------------------------------


class CountingS3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
    """The real s3fs, under ``s3count://``, noting the key and range of every GetObject."""

    protocol = ("s3count",)
    gets: ClassVar[list[tuple[str, str | None, int]]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()

    async def _call_s3(self, method: str, *akwarglist: Any, **kwargs: Any) -> Any:
        response = await super()._call_s3(method, *akwarglist, **kwargs)
        if method == "get_object":
            with self._lock:
                self.gets.append((kwargs["Key"], kwargs.get("Range"), response["ContentLength"]))
        return response


@pytest.fixture
def counting_bucket(s3_bucket: str) -> Iterator[str]:
    """The bucket of ``s3_bucket`` as an ``s3count://`` URL."""
    fsspec.register_implementation("s3count", CountingS3FileSystem, clobber=True)
    CountingS3FileSystem.gets.clear()
    yield s3_bucket.replace("s3://", "s3count://", 1)
    CountingS3FileSystem.gets.clear()
    CountingS3FileSystem.clear_instance_cache()


@dataclass
class Weights(hyperstate.Lazy):
    step: int
    small: torch.Tensor
    big: torch.Tensor


def _data_ranges(blob: bytes) -> dict[tuple[int, ...], tuple[int, int]]:
    """Shape of each safetensors entry -> its (first, last) byte in the file."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    header.pop("__metadata__", None)
    start = 8 + length
    return {
        tuple(e["shape"]): (start + e["data_offsets"][0], start + e["data_offsets"][1] - 1)
        for e in header.values()
    }


def test_reading_one_lazy_tensor_fetches_only_its_byte_range(counting_bucket: str) -> None:
    small = torch.arange(16, dtype=torch.float32)
    big = torch.randn(512, 512)  # 1 MiB
    url = f"{counting_bucket}/run/state.ron"
    hyperstate.dump(Weights(5, small, big), url)
    blob_key = "run/blobs/rank-00000.safetensors"
    ranges = _data_ranges(_fs.read_bytes(f"{counting_bucket}/{blob_key}"))
    small_range, big_range = ranges[(16,)], ranges[(512, 512)]
    gets = CountingS3FileSystem.gets
    gets.clear()

    loaded = hyperstate.load(Weights, url)
    assert loaded.step == 5
    assert all(key != blob_key or rng is not None for key, rng, _ in gets), gets
    before = len(gets)
    assert torch.equal(loaded.small, small)
    touched = gets[before:]
    blob_gets = [(rng, size) for key, rng, size in gets if key == blob_key]
    # Only ranged reads of the blob: its header and the entry of `small`, never `big`.
    assert all(key == blob_key and rng is not None for key, rng, _ in touched), touched
    assert (f"bytes={small_range[0]}-{small_range[1]}", small.nbytes) in blob_gets
    fetched = sum(size for _, size in blob_gets)
    assert fetched <= small_range[0] + small.nbytes, blob_gets
    assert fetched < big.nbytes // 100

    before = len(gets)
    assert torch.equal(loaded.big, big)
    assert gets[before:] == [(blob_key, f"bytes={big_range[0]}-{big_range[1]}", big.nbytes)]
