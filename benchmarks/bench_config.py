"""Config load/dump speed on a ~1 MB config, against tomllib and json in the same process.

Run: .venv/bin/python benchmarks/bench_config.py [--layers N] [--repeat R]

Prints the best-of-R time of each step and the ratios the configs issue targets:
RON parse vs tomllib (target >= 1.5x faster) and typed load vs bare parse (target <= 2x).
"""

from __future__ import annotations

import argparse
import enum
import gc
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tomllib

import hyperstate
from hyperstate import ron
from hyperstate.serde import plain, to_value


class Act(enum.Enum):
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"


@dataclass
class Optim:
    lr: float
    betas: tuple[float, float]
    eps: float
    schedule: str


@dataclass
class Layer:
    name: str
    width: int
    dropout: float
    act: Act
    tags: list[str]
    params: dict[str, float]
    optim: Optim
    note: str | None = None


@dataclass
class Config:
    seed: int
    run_name: str
    layers: list[Layer] = field(default_factory=list)


def make_config(n_layers: int, seed: int = 0) -> Config:
    rng = random.Random(seed)
    layers = [
        Layer(
            name=f"block_{i}.attention",
            width=rng.randint(1, 8192),
            dropout=rng.random(),
            act=rng.choice(list(Act)),
            tags=[f"tag{rng.randint(0, 99)}" for _ in range(3)],
            params={f"p{j}": rng.uniform(-10, 10) for j in range(4)},
            optim=Optim(
                lr=rng.uniform(1e-5, 1e-2),
                betas=(0.9, rng.random()),
                eps=1e-8,
                schedule=f"step: {rng.random():.3g}@0 cos 0.0@{rng.randint(1000, 100000)}",
            ),
            note=None if i % 3 else f'layer "{i}" says\thello',
        )
        for i in range(n_layers)
    ]
    return Config(seed=seed, run_name="benchmark", layers=layers)


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def to_toml(data: dict[str, Any]) -> str:
    """The same data as TOML, in the natural layout (tables, arrays of tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, list)]
    for layer in data["layers"]:
        lines.append("\n[[layers]]")
        for k, v in layer.items():
            if not isinstance(v, dict) and v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in layer.items():
            if isinstance(v, dict):
                lines.append(f"[layers.{k}]")
                lines.extend(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--layers", type=int, default=1500, help="layers in the config (1500: about 1 MB of RON)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    config = make_config(args.layers)
    text = hyperstate.dumps(config)
    data = plain(to_value(config))
    toml_text = to_toml(data)
    json_text = json.dumps(data)
    assert hyperstate.loads(Config, text) == config
    assert tomllib.loads(toml_text)["layers"][0]["optim"]["lr"] == config.layers[0].optim.lr

    t = {
        "ron parse": best(lambda: ron.loads(text), args.repeat),
        "typed load": best(lambda: hyperstate.loads(Config, text), args.repeat),
        "typed dump": best(lambda: hyperstate.dumps(config), args.repeat),
        "tomllib parse": best(lambda: tomllib.loads(toml_text), args.repeat),
        "json parse": best(lambda: json.loads(json_text), args.repeat),
    }
    print(
        f"config: {args.layers} layers; RON {len(text) / 1e6:.2f} MB, "
        f"TOML {len(toml_text) / 1e6:.2f} MB, JSON {len(json_text) / 1e6:.2f} MB"
    )
    for name, seconds in t.items():
        print(f"  {name:<14} {seconds * 1e3:8.1f} ms")
    print(
        f"tomllib / ron parse       = {t['tomllib parse'] / t['ron parse']:.2f}x  (target >= 1.5)"
    )
    print(f"typed load / ron parse    = {t['typed load'] / t['ron parse']:.2f}x  (target <= 2.0)")
    print(
        f"ron parse / json parse    = {t['ron parse'] / t['json parse']:.1f}x  (C json, reference)"
    )
    print(f"typed dump / typed load   = {t['typed dump'] / t['typed load']:.2f}x")


if __name__ == "__main__":
    main()
