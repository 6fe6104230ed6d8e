"""Checks that need a CUDA GPU; run on a machine that has one (the test suite runs on CPU).

    python scripts/device_check.py

Saves CUDA tensors (including views of one storage) through the blob layer and through
``hyperstate.dump``, restores them to their device and with ``map_location="cpu"``, and
checks that tied tensors stay tied on the GPU. Exits non-zero on the first failure.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

import hyperstate
from hyperstate.tensors.safetensors import BlobReader, BlobWriter

FILE = "blobs/rank-00000.safetensors"


@dataclass
class State:
    w: torch.Tensor
    w_t: torch.Tensor
    scale: torch.Tensor


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device here"
    with tempfile.TemporaryDirectory() as tmp:
        w = torch.randn(64, 64, device="cuda")
        writer = BlobWriter(tmp, FILE)
        refs = [writer.add("w", w), writer.add("w_t", w.t()), writer.add("cpu", torch.ones(3))]
        refs = writer.write()
        assert refs[0].device == str(w.device), refs[0]
        reader = BlobReader(tmp, FILE)
        w2, w_t2 = reader.read(refs[0]), reader.read(refs[1])
        assert isinstance(w2, torch.Tensor) and isinstance(w_t2, torch.Tensor)
        assert w2.device == w.device and torch.equal(w2, w) and torch.equal(w_t2, w.t())
        w2.zero_()
        assert w_t2.abs().sum().item() == 0, "views of one storage are tied on the GPU"
        cpu = reader.read(refs[0], map_location="cpu")
        assert isinstance(cpu, torch.Tensor) and cpu.device.type == "cpu"

        state = State(w=w, w_t=w.t(), scale=torch.tensor(2.0, device="cuda"))
        hyperstate.dump(state, Path(tmp) / "s" / "state.ron")
        back = hyperstate.load(State, Path(tmp) / "s" / "state.ron")
        assert back.w.is_cuda and back.scale.is_cuda and torch.equal(back.w, w)
        on_cpu = hyperstate.load(State, Path(tmp) / "s" / "state.ron", map_location="cpu")
        assert not on_cpu.w.is_cuda and not on_cpu.scale.is_cuda
    print("device checks passed on", torch.cuda.get_device_name())


if __name__ == "__main__":
    main()
