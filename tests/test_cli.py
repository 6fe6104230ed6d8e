"""The ``hyperstate`` command, run as a subprocess on checkpoints the library wrote.

Commands that read no tensors (ls, show, verify, diff, schedule) must not import torch,
so most subprocesses here are quick; the few that do (convert, diff --values) are the
ones that need it.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hyperstate
from hyperstate.storage import CheckpointStore
from hyperstate.tools.cli import main

HYPERSTATE = str(Path(sys.executable).with_name("hyperstate"))


def hs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return subprocess.run(
        [HYPERSTATE, *args], capture_output=True, text=True, check=False, cwd=cwd, env=env
    )


def python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=cwd
    )


def one_error_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hyperstate {command}: error: "), result.stderr
    return lines[0]


@dataclass
class Config:
    lr: float = 0.01
    hidden: int = 8


@dataclass
class State:
    step: int = 0
    loss: float = 0.0
    model: nn.Module = field(default_factory=lambda: nn.Sequential(nn.Linear(4, 8)))
    optimizer: torch.optim.Optimizer | None = None
    mask: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=np.float32))


def initial_state(config: Config) -> State:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, config.hidden), nn.Linear(config.hidden, 1))
    return State(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr))


LOSSES = {1: 0.5, 2: 0.2, 3: 0.4, 4: 0.3}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of four committed checkpoints (steps 1 to 4), written by HyperState."""
    root = tmp_path_factory.mktemp("cli") / "run"
    with hyperstate.HyperState.load(
        Config,
        State,
        initial_state,
        None,
        root,
        "step",
        overrides=["lr=step: 0.01@0 cos 0@100"],
    ) as hs_:
        for _ in range(4):
            state = hs_.state
            loss = state.model(torch.randn(2, 4)).pow(2).mean()
            loss.backward()
            assert state.optimizer is not None
            state.optimizer.step()
            state.step += 1
            state.loss = LOSSES[state.step]
            hs_.step()
    return root


def ckpt(run: Path, number: int) -> Path:
    return run / f"step-{number:012d}"


def copy_of(run: Path, number: int, tmp_path: Path) -> Path:
    target = tmp_path / f"copy-{number}"
    shutil.copytree(ckpt(run, number), target)
    return target


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("ls", "show", "verify", "diff", "schedule", "convert", "set", "schema"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        assert f"usage: hyperstate {command}" in capsys.readouterr().out


def test_importing_the_cli_does_not_import_torch() -> None:
    result = python("import sys, hyperstate.tools.cli; print('torch' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr


# -- ls ---------------------------------------------------------------------------------


def test_ls_lists_newest_first_with_retention(run: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(run, work)
    (work / "step-000000000009").mkdir()  # a save that crashed: no COMMITTED
    (work / "step-000000000009" / "state.ron").write_text("State()\n")
    result = hs("ls", str(work), "--keep-last", "1", "--keep-every", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NUMBER", "CREATED", "SIZE", "STATUS", "RETENTION"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["9", "4", "3", "2", "1"]
    assert rows[0][-2:] == ["uncommitted", "-"]
    assert [r[-1] for r in rows[1:]] == ["keep", "delete", "keep", "delete"]
    assert all("UTC" in r for r in rows[1:])
    assert "\033[" not in result.stdout  # no colour into a pipe

    listed = hs("ls", str(work), "--keep-last", "1", "--keep-every", "2", "--json")
    data = json.loads(listed.stdout)
    by_number = {c["number"]: c for c in data["checkpoints"]}
    assert [c["number"] for c in data["checkpoints"]] == [9, 4, 3, 2, 1]
    assert by_number[9]["committed"] is False and by_number[9]["keep"] is None
    assert [by_number[n]["keep"] for n in (4, 3, 2, 1)] == [True, False, True, False]
    store = CheckpointStore(run)
    assert by_number[4]["size"] == sum(e.size for e in store.get(4).manifest.files.values())


def test_ls_keep_best_reads_the_metric(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["ls", str(run), "--keep-best", "1", "--best-field", "loss", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    kept = sorted(c["number"] for c in data["checkpoints"] if c["keep"])
    assert kept == [2, 4]  # the best (loss 0.2) and, always, the newest
    assert main(["ls", str(run), "--keep-best", "1"]) == 2
    assert "--keep-best needs --best-field" in capsys.readouterr().err


def test_ls_of_a_missing_directory_fails_with_one_line(tmp_path: Path) -> None:
    line = one_error_line(hs("ls", str(tmp_path / "nope")), "ls")
    assert "no such directory" in line


# -- show -------------------------------------------------------------------------------


def test_show_prints_config_and_state_as_a_tree(run: Path) -> None:
    result = hs("show", str(run))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"config ({ckpt(run, 4)}/config.ron)" in out
    assert 'lr: "step: 0.01@0 cos 0@100"' in out
    assert "  step: 4\n" in out
    assert "0.weight: Tensor float32[8, 4] 128 B" in out
    assert "step: Tensor float32 = 4.0" in out  # Adam's step counter, inline
    assert "mask: Array float32[3] 12 B" in out
    assert "betas: (0.9, 0.999)" in out

    older = hs("show", str(run), "--step", "2", "step")
    assert older.stdout == "step: 2\n"


def test_show_selects_a_field_path(run: Path) -> None:
    result = hs("show", str(ckpt(run, 4)), "model.0.weight")
    assert result.stdout == "model.0.weight: Tensor float32[8, 4] 128 B\n"
    lr = hs("show", str(ckpt(run, 4)), "optimizer.param_groups[0].lr", "--json")
    assert json.loads(lr.stdout) == {"state": 0.01}
    both = hs("show", str(run), "config.lr")
    assert both.stdout == 'config.lr: "step: 0.01@0 cos 0@100"\n'


def test_show_json(run: Path) -> None:
    result = hs("show", str(run), "model", "--json")
    data = json.loads(result.stdout)["state"]
    assert data["0.weight"] == {
        "__tensor__": {
            "kind": "Tensor",
            "dtype": "float32",
            "shape": [8, 4],
            "nbytes": 128,
            "checksum": data["0.weight"]["__tensor__"]["checksum"],
        }
    }
    assert data["0.weight"]["__tensor__"]["checksum"].startswith("xxh3-64:")


def test_show_reads_no_tensor_bytes_and_no_torch(run: Path, tmp_path: Path) -> None:
    copy = copy_of(run, 4, tmp_path)
    shutil.rmtree(copy / "blobs")  # a 10 GB checkpoint's blobs are never read
    code = (
        "import sys; from hyperstate.tools.cli import main; "
        f"rc = main(['show', {str(copy)!r}, 'model']); "
        "print('torch' in sys.modules, 'numpy' in sys.modules); sys.exit(rc)"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert "0.weight: Tensor float32[8, 4] 128 B" in result.stdout
    assert result.stdout.splitlines()[-1] == "False False"


def test_ls_reads_no_blob_file_and_no_torch(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for blobs in copy.glob("*/blobs"):
        shutil.rmtree(blobs)  # ls lists from COMMITTED alone: blobs are never opened
    code = (
        "import sys; from hyperstate.tools.cli import main; "
        f"rc = main(['ls', {str(copy)!r}]); "
        "print('torch' in sys.modules, 'numpy' in sys.modules); sys.exit(rc)"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()[1:-1] if line[:1].isdigit()]
    expected = sorted((int(p.name.split("-")[1]) for p in run.glob("step-*")), reverse=True)
    assert [int(n) for n in listed] == expected
    assert result.stdout.splitlines()[-1] == "False False"


def test_show_an_unknown_field_suggests_one(run: Path) -> None:
    line = one_error_line(hs("show", str(run), "optimizer.param_groups[0].lrr"), "show")
    assert "has no field 'lrr'; did you mean 'lr'?" in line


def test_show_a_reference_form_it_does_not_know(tmp_path: Path) -> None:
    # A sharded tensor, as a distributed save may write it, and other ref-like structs.
    (tmp_path / "state.ron").write_text(
        "State(\n"
        '    w: ShardedTensor(dtype: "bfloat16", shape: (4, 6), shards: [\n'
        '        Shard(offsets: (0, 0), file: "blobs/rank-00000.safetensors", key: "w"),\n'
        '        Shard(offsets: (2, 0), file: "blobs/rank-00001.safetensors", key: "w"),\n'
        "    ]),\n"
        '    q: QuantTensor(dtype: "int4", shape: (8,), scale: 0.5),\n'
        '    odd: Tensor(dtype: "float32", shape: "oops"),\n'
        ")\n"
    )
    result = hs("show", str(tmp_path / "state.ron"))
    assert result.returncode == 0, result.stderr
    assert "w: ShardedTensor bfloat16[4, 6] 48 B, 2 shards" in result.stdout
    assert "q: QuantTensor int4[8]\n" in result.stdout  # unknown dtype: no size
    assert "odd: Tensor\n" in result.stdout and 'shape: "oops"' in result.stdout


# -- verify -----------------------------------------------------------------------------


def test_verify_reports_edited_corrupted_and_missing_files(run: Path, tmp_path: Path) -> None:
    copy = copy_of(run, 3, tmp_path)
    ok = hs("verify", str(copy))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"ok {copy} (3 files, ")

    state = copy / "state.ron"
    state.write_text(state.read_text().replace('"lr": 0.01', '"lr": 0.005', 1))
    edited = hs("verify", str(copy))
    assert edited.returncode == 0  # hand edits are a feature
    assert "edited" in edited.stdout and "state.ron: edited since commit" in edited.stdout

    blob = copy / "blobs" / "rank-00000.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    (copy / "config.ron").unlink()
    bad = hs("verify", str(copy), "--json")
    assert bad.returncode == 1
    problems = {p["path"]: p["kind"] for p in json.loads(bad.stdout)["checkpoints"][0]["problems"]}
    assert problems == {
        "blobs/rank-00000.safetensors": "corrupted",
        "config.ron": "missing",
        "state.ron": "edited",
    }
    text = hs("verify", str(copy))
    assert text.returncode == 1
    assert f"BAD {copy}" in text.stdout
    assert f"{copy}/blobs/rank-00000.safetensors: corrupted: expected" in text.stdout
    assert text.stderr == "hyperstate verify: error: 2 bad files\n"


def test_verify_all_checkpoints_of_a_run(run: Path) -> None:
    result = hs("verify", str(run), "--all", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert [c["number"] for c in data["checkpoints"]] == [1, 2, 3, 4]


def test_verify_of_an_uncommitted_directory_fails(tmp_path: Path) -> None:
    (tmp_path / "state.ron").write_text("State()\n")
    line = one_error_line(hs("verify", str(tmp_path)), "verify")
    assert "is not committed (no COMMITTED)" in line


def _on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run the command with stdout and stderr on a pseudo-terminal; (status, what it wrote)."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm"
    process = subprocess.Popen(
        [HYPERSTATE, *args], stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, env=env
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=30), output.decode("utf-8", "replace")


def test_verify_shows_progress_and_colour_on_a_terminal(run: Path) -> None:
    status, output = _on_a_terminal(["verify", str(ckpt(run, 4))])
    assert status == 0
    assert "verifying [" in output and "100%" in output
    assert "\033[32mok\033[0m" in output
    piped = hs("verify", str(ckpt(run, 4)))
    assert "verifying" not in piped.stderr and "\033[" not in piped.stdout


# -- diff -------------------------------------------------------------------------------


def test_diff_of_two_configs(tmp_path: Path) -> None:
    hyperstate.dump(Config(lr=0.1), tmp_path / "a.ron")
    hyperstate.dump(Config(lr=0.2, hidden=16), tmp_path / "b.ron")
    result = hs("diff", str(tmp_path / "a.ron"), str(tmp_path / "b.ron"), "--exit-code")
    assert result.returncode == 1
    assert result.stdout == "~ lr: 0.1 -> 0.2\n~ hidden: 8 -> 16\n2 differences\n"
    same = hs("diff", str(tmp_path / "a.ron"), str(tmp_path / "a.ron"), "--exit-code")
    assert (same.returncode, same.stdout) == (0, "no differences\n")


def test_diff_of_two_checkpoints_with_values(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In this process: --values reads tensors, and a subprocess importing torch is slow.
    assert main(["diff", str(ckpt(run, 2)), str(ckpt(run, 3)), "--values", "--json"]) == 0
    changes = {d["path"]: d for d in json.loads(capsys.readouterr().out)["differences"]}
    assert changes["state.step"]["a"] == 2 and changes["state.step"]["b"] == 3
    assert "state.loss" in changes
    weight = changes["state.model.0.weight"]
    assert weight["change"] == "changed"
    store = CheckpointStore(run)
    a = hyperstate.load(State, f"{store.path(2)}/state.ron", initial_state=initial_state(Config()))
    b = hyperstate.load(State, f"{store.path(3)}/state.ron", initial_state=initial_state(Config()))
    expected = (a.model[0].weight - b.model[0].weight).abs().max().item()
    assert weight["max_abs_diff"] == pytest.approx(expected, rel=1e-6)
    assert changes["state.optimizer.state[0].step"]["max_abs_diff"] == 1.0
    assert "config.lr" not in changes and "state.mask" not in changes

    text = hs("diff", str(ckpt(run, 2)), str(ckpt(run, 3)))
    assert "~ state.step: 2 -> 3\n" in text.stdout
    assert "~ state.model.0.weight: Tensor float32[8, 4] 128 B, checksum xxh3-64:" in text.stdout


# -- schedule ---------------------------------------------------------------------------


def test_schedule_prints_values_and_a_plot() -> None:
    result = hs("schedule", "step: 3e-4@0 cos 0@1e5", "--to", "100000", "--points", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "step: 3e-4@0 cos 0@1e5",
        "    step  value",
        "       0  0.0003",
        "   50000  0.00015",
        "  100000  0",
    ]
    plot = lines[6:]
    assert len(plot) == 12 + 2
    assert plot[0].startswith("0.0003 ")
    assert plot[11].startswith("     0 ")
    assert plot[-1].strip().startswith("0") and "100000  (step)" in plot[-1]

    data = json.loads(hs("schedule", "step: 1@0 step 2@10", "--points", "3", "--json").stdout)
    assert data["values"] == [{"x": 0, "value": 1}, {"x": 5, "value": 1}, {"x": 10, "value": 2}]


def test_schedule_parse_error_points_at_the_token() -> None:
    result = hs("schedule", "step: 3e-4@0 cosx 0@100")
    assert result.returncode == 2
    (first,) = result.stderr.splitlines()  # one line for a script or a log
    assert first.startswith("hyperstate schedule: error: schedule ")
    assert "found 'cosx'" in first
    # On a terminal, the offending text follows with a caret under the spot.
    controller, terminal = pty.openpty()
    try:
        code = subprocess.run(
            [HYPERSTATE, "schedule", "step: 3e-4@0 cosx 0@100"], stderr=terminal, timeout=120
        ).returncode
        shown = os.read(controller, 65536).decode().replace("\r\n", "\n")
    finally:
        os.close(controller)
        os.close(terminal)
    assert code == 2
    first, text, caret = shown.splitlines()
    assert first == result.stderr.strip()
    assert caret.index("^") == text.index("cosx")


def test_schedule_png(tmp_path: Path) -> None:
    png = tmp_path / "lr.png"
    result = hs("schedule", "step: 3e-4@0 cos 0@1e5", "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in result.stdout


def test_schedule_png_without_matplotlib_says_how_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from hyperstate.tools.cli import main\n"
        f"sys.exit(main(['schedule', 'step: 1@0 2@10', '--png', {str(tmp_path / 'x.png')!r}]))"
    )
    result = python(code)
    assert result.returncode == 2
    assert result.stderr == (
        "hyperstate schedule: error: --png needs matplotlib: pip install 'hyperstate[plot]'\n"
    )
    assert not (tmp_path / "x.png").exists()


# -- convert ----------------------------------------------------------------------------


def test_convert_a_torch_save_file_and_export_it_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    torch.save({"model": model.state_dict(), "epoch": 7}, tmp_path / "ckpt.pt")
    imported = hs("convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "run"), "--as-fields")
    assert imported.returncode == 0, imported.stderr
    path = CheckpointStore(tmp_path / "run").path(0)
    assert imported.stdout == f"wrote {path} (from torch {tmp_path / 'ckpt.pt'})\n"
    assert CheckpointStore(tmp_path / "run").verify(0) == []

    @dataclass
    class Imported:
        model: dict[str, torch.Tensor]
        epoch: int

    loaded = hyperstate.load(Imported, f"{path}/state.ron")
    assert loaded.epoch == 7
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model[name], value)

    out = tmp_path / "weights.safetensors"
    # The export in this process: a second subprocess importing torch is slow.
    assert main(["convert", str(tmp_path / "run"), str(out), "--select", "model"]) == 0
    assert capsys.readouterr().out == f"wrote 4 tensors from {path} to {out}\n"
    from safetensors.torch import load_file

    fresh = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    fresh.load_state_dict(load_file(out))
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_convert_refuses_an_unknown_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    line = one_error_line(
        hs("convert", str(tmp_path / "notes.txt"), str(tmp_path / "r")), "convert"
    )
    assert "cannot tell its format; name it with --from" in line


# -- fsspec URLs, set -------------------------------------------------------------------


@pytest.fixture
def memory_run() -> Iterator[str]:
    import fsspec

    url = "memory://hyperstate-cli-test/run"
    with hyperstate.HyperState.load(Config, State, initial_state, None, url, "step") as run_:
        for _ in range(2):
            run_.state.step += 1
            run_.step()
    yield url
    fsspec.filesystem("memory").rm("/hyperstate-cli-test", recursive=True)


def test_commands_on_a_memory_url(memory_run: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", memory_run, "--json"]) == 0
    numbers = [c["number"] for c in json.loads(capsys.readouterr().out)["checkpoints"]]
    assert numbers == [2, 1]
    assert main(["show", memory_run, "model.1.bias"]) == 0
    assert capsys.readouterr().out == "model.1.bias: Tensor float32[1] 4 B\n"
    assert main(["verify", memory_run]) == 0
    assert capsys.readouterr().out.startswith(f"ok {memory_run}/step-000000000002 (3 files")
    assert main(["diff", f"{memory_run}/step-000000000001", memory_run, "--json"]) == 0
    paths = [d["path"] for d in json.loads(capsys.readouterr().out)["differences"]]
    assert paths == ["state.step"]
    out = f"{memory_run}-export/model.safetensors"
    assert main(["convert", memory_run, out, "--select", "model"]) == 0
    capsys.readouterr()
    from hyperstate import _fs

    assert _fs.read_bytes(out)[8:9] == b"{"


def test_set_still_requests_an_edit(tmp_path: Path) -> None:
    pending = CheckpointStore(tmp_path).begin(1)  # `set` checks the edit against config.ron
    pending.write_file("config.ron", hyperstate.dumps(Config()).encode())
    pending.commit()
    result = hs("set", str(tmp_path), "lr=0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("requested: ")
