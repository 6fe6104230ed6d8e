"""The ``hyperstate`` console command.

=================================  ===========================================================
``hyperstate ls RUN_DIR``          the checkpoints of a run, newest first, and which ones a
                                   retention policy keeps (``--long``: the run that wrote each)
``hyperstate show CKPT [PATH]``    config and state as a tree; tensors as dtype, shape and size
                                   (no tensor bytes are read); the run that wrote it
``hyperstate verify CKPT``         every file against ``COMMITTED`` (sizes and checksums)
``hyperstate diff A B``            two configs, or two checkpoints' configs and state, as typed
                                   values
``hyperstate schedule TEXT``       a schedule's values, plotted in the terminal or to a PNG
``hyperstate convert SRC DST``     import a ``torch.save`` / safetensors / DCP checkpoint, or
                                   export a checkpoint to a safetensors or ``torch.save`` file
                                   or a DCP directory
``hyperstate set RUN_DIR p=v``     checked live edits of a running experiment
                                   (:mod:`hyperstate.edits`)
``hyperstate completion SHELL``    a completion script for bash, zsh or tcsh (by shtab)
``hyperstate schema ...``          schema evolution (:mod:`hyperstate.tools.schema_cli`)
=================================  ===========================================================

Every path may be an fsspec URL. Commands exit with 0 on success, with 1 when they found
what they look for (``verify``: damage; ``diff --exit-code``: differences; ``set --wait``:
a rejected edit), and on any error print one line, ``hyperstate <command>: error:
<reason>``, to stderr and exit with 2. Colour is used only on a terminal (``--color``,
``NO_COLOR``). torch is imported only by the commands that read tensors.
"""

from __future__ import annotations

import argparse
import contextvars
import importlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import hyperstate
from hyperstate.errors import HyperstateError, ParseError, format_int
from hyperstate.tools import schema_cli

if TYPE_CHECKING:
    from hyperstate.schedule import Schedule
    from hyperstate.storage import CheckpointInfo, RunInfo
    from hyperstate.tensors.safetensors import BlobReader

__all__ = ["main"]

_PNG_HINT = "pip install 'hyperstate[plot]'"
_DEFAULT_WAIT = 120.0  # seconds `set --wait` waits when not told
_SHELLS = ("bash", "zsh", "tcsh")


class _CommandError(Exception):
    """A command cannot do what was asked; the message is the one-line reason."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperstate`` command; returns the exit status."""
    parser, schema = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives an optional positional (show's PATH) nothing when an option comes
    # between it and CKPT (`show RUN --step 2 step`); take it from what is left over.
    if args.group == "show" and args.field is None and len(extra) == 1:
        args.field = extra.pop() if not extra[0].startswith("-") else None
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.group is None:
        parser.print_help()
        return 0
    if args.group == "schema":
        return _cmd_schema(args, schema)
    if args.group == "completion":
        args.parser = parser
    try:
        result: int = args.run(args)
        return result
    except BrokenPipeError:  # `hyperstate show ... | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit flush is quiet
        return 1
    except (_CommandError, HyperstateError, OSError, ValueError, ImportError) as e:
        print(_error_text(args.group, e), file=sys.stderr)
        return 2
    except Exception as e:  # one line, never a traceback, whatever the input
        print(_error_text(args.group, e, internal=True), file=sys.stderr)
        return 2


def _error_text(command: str, error: BaseException, *, internal: bool = False) -> str:
    """The one line an error prints: ``hyperstate CMD: error: ...``.

    A parse error's source line and caret follow it only on a terminal (a log or a script
    reading stderr gets one line). An ``internal`` error (not one hyperstate raised on
    purpose) names its type, so that it can be reported.
    """
    text = str(error).strip() or type(error).__name__
    if isinstance(error, hyperstate.ConfigError) and len(error.issues) > 1:
        head = f"{error.context}: " if error.context else ""
        listed = "; ".join(f"({n}) {issue}" for n, issue in enumerate(error.issues, 1))
        text = f"{head}{len(error.issues)} problems: {listed}"
    if isinstance(error, FileNotFoundError) and error.filename:
        text = f"{error.filename}: no such file or directory"
    if internal:
        text = f"internal error (please report it): {type(error).__name__}: {text}"
    first, _, rest = text.partition("\n")
    line = f"hyperstate {command}: error: {first}"
    if rest and isinstance(error, ParseError | hyperstate.ScheduleError) and sys.stderr.isatty():
        line += "\n" + rest
    return line


# ---------------------------------------------------------------------------------------
# The command line


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="hyperstate",
        description="Typed configs, schema evolution and checkpoints for PyTorch training runs.",
        epilog="Every path may be a local path or an fsspec URL (s3://..., gs://..., "
        "memory://...). 'hyperstate COMMAND --help' describes each command.",
    )
    parser.add_argument(
        "--version", action="version", version=f"hyperstate {hyperstate.__version__}"
    )
    commands = parser.add_subparsers(dest="group", metavar="COMMAND", title="commands")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output: auto (the default) on a terminal unless NO_COLOR is set",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON, for scripts")

    def command(name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=description,
            epilog=epilog,
            parents=[common, as_json] if name != "convert" else [common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    ls = command(
        "ls",
        "list the checkpoints of a run",
        "List the checkpoints under RUN_DIR, newest first: number, time of commit, size, "
        "whether committed, and whether the retention rules given keep it (what "
        "CheckpointPolicy's keep_* options would delete; nothing is deleted here).",
        "examples:\n  hyperstate ls runs/exp1\n  hyperstate ls s3://bucket/exp1 --keep-last 2 "
        "--keep-every 1000\n  hyperstate ls runs/exp1 --keep-best 3 --best-field eval.loss",
    )
    ls.add_argument("run_dir", metavar="RUN_DIR", help="the run's checkpoint_dir")
    ls.add_argument("--keep-last", type=int, metavar="K", help="keep the newest K")
    ls.add_argument("--keep-every", type=int, metavar="M", help="keep numbers divisible by M")
    ls.add_argument("--keep-best", type=int, metavar="K", help="keep the best K by --best-field")
    ls.add_argument("--best-field", metavar="PATH", help="a numeric state field, e.g. eval.loss")
    ls.add_argument("--mode", choices=("min", "max"), default="min", help="best is min or max")
    ls.add_argument("--prefix", default="step", help="checkpoint directory prefix (step)")
    ls.add_argument(
        "-l",
        "--long",
        action="store_true",
        help="also the run that wrote each checkpoint: command, ranks and hosts, git "
        "commit, versions, wall time",
    )
    ls.set_defaults(run=_cmd_ls)

    show = command(
        "show",
        "show a checkpoint's config and state as a tree",
        "Show the config and the state of a checkpoint as a tree. Tensors are shown with "
        "dtype, shape and size from the references in state.ron: no tensor bytes are read, "
        "so this is quick on a large checkpoint in the cloud.",
        "CKPT is a checkpoint directory, a run directory (its newest committed checkpoint, or "
        "--step), or a .ron file.\nPATH selects a subtree: optimizer.lr, model.fc1.weight, "
        "optimizer.param_groups[0].lr;\nprefix it with config. or state. when both have it."
        "\n\nexamples:\n  hyperstate show runs/exp1\n  hyperstate show runs/exp1 optimizer.lr\n"
        "  hyperstate show runs/exp1/step-000000001000 model --json",
    )
    show.add_argument("ckpt", metavar="CKPT", help="checkpoint, run directory or .ron file")
    show.add_argument("field", metavar="PATH", nargs="?", help="a field path to show")
    _checkpoint_options(show)
    show.set_defaults(run=_cmd_show)

    verify = command(
        "verify",
        "check a checkpoint's files against COMMITTED",
        "Check every file of a committed checkpoint against the sizes and checksums in its "
        "COMMITTED file. Hand-edited .ron files are reported as edited, which is allowed; a "
        "blob file that differs is corrupted, a listed file that is gone is missing. Exits "
        "with 1 when a file is corrupted or missing.",
        "examples:\n  hyperstate verify runs/exp1\n  hyperstate verify runs/exp1 --all\n"
        "  hyperstate verify s3://bucket/exp1/step-000000001000 --json",
    )
    verify.add_argument("ckpt", metavar="CKPT", help="checkpoint or run directory")
    verify.add_argument(
        "--all", action="store_true", help="verify every committed checkpoint of a run"
    )
    _checkpoint_options(verify)
    verify.set_defaults(run=_cmd_verify)

    diff = command(
        "diff",
        "compare two configs or checkpoints",
        "Compare two config files, or the config and state of two checkpoints, field by "
        "field. Tensors are compared by dtype, shape and the checksums in state.ron; "
        "--values also reads them and prints the largest absolute difference.",
        "A and B are checkpoint directories, run directories (newest checkpoint) or .ron "
        "files.\n\nexamples:\n  hyperstate diff runs/a/config.ron runs/b/config.ron\n"
        "  hyperstate diff runs/exp1/step-000000001000 runs/exp1/step-000000002000 --values",
    )
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument(
        "--values", action="store_true", help="read changed tensors: max absolute difference"
    )
    diff.add_argument(
        "--exit-code", action="store_true", help="exit with 1 when there are differences"
    )
    diff.add_argument(
        "--schema",
        metavar="FILE",
        help="the config's schema file (dump-schema): a field one side leaves out is "
        "compared as its default",
    )
    diff.add_argument(
        "--config-class",
        metavar="MODULE:CLASS",
        help="the config class (imported from the current directory), for the defaults, "
        "like --schema",
    )
    diff.set_defaults(run=_cmd_diff)

    schedule = command(
        "schedule",
        "print and plot a hyperparameter schedule",
        "Print a schedule's values at a few points and plot it in the terminal; --png "
        "writes a picture (needs matplotlib: " + _PNG_HINT + ").",
        "examples:\n  hyperstate schedule 'step: 3e-4@0 cos 0@1e5'\n"
        "  hyperstate schedule 'step: 0@0 lin 1e-3@1000 cos 0@1e5' --to 20000 --png lr.png",
    )
    schedule.add_argument("schedule", metavar="SCHEDULE", help="e.g. 'step: 3e-4@0 cos 0@1e5'")
    schedule.add_argument("--from", dest="start", type=float, metavar="X", help="first x")
    schedule.add_argument("--to", dest="end", type=float, metavar="X", help="last x")
    schedule.add_argument("--points", type=int, default=11, help="values to print (11)")
    schedule.add_argument("--width", type=int, default=64, help="plot width in characters")
    schedule.add_argument("--height", type=int, default=12, help="plot height in lines")
    schedule.add_argument("--png", metavar="FILE", help="also write the plot as a PNG")
    schedule.set_defaults(run=_cmd_schedule)

    convert = command(
        "convert",
        "import torch.save / safetensors / DCP checkpoints, export to any of them",
        "Import a torch.save file (loaded with weights_only=True), a safetensors file or a "
        "torch.distributed.checkpoint directory into a committed hyperstate checkpoint "
        "under the run directory DST; or, when SRC is a hyperstate checkpoint (or run "
        "directory), export it to DST: its tensors to a safetensors file (DST ending in "
        ".safetensors), or its state as a nested dict to a torch.save file (.pt, .pth, "
        ".bin, .ckpt) that torch.load(DST, weights_only=True) reads, or as a "
        "torch.distributed.checkpoint directory (.dcp) that plain dcp.load reads.\n\n"
        "An import writes state.ron as State(model: {...}) (--field names the field; "
        "--as-fields makes the top-level keys the fields; --stateful writes the dict as "
        "the state of a module or optimizer field).",
        "examples:\n  hyperstate convert model.pt runs/finetune\n"
        "  hyperstate convert model.safetensors runs/finetune --stateful --config config.ron\n"
        "  hyperstate convert dcp_checkpoint/ runs/imported --as-fields --step 1000\n"
        "  hyperstate convert runs/exp1 model.safetensors --select model\n"
        "  hyperstate convert runs/exp1 model.pt --select model\n"
        "  hyperstate convert runs/exp1 exported.dcp",
    )
    convert.add_argument("src", metavar="SRC")
    convert.add_argument("dst", metavar="DST")
    convert.add_argument(
        "--from",
        dest="format",
        choices=("auto", "torch", "safetensors", "dcp", "hyperstate"),
        default="auto",
        help="the format of SRC (by default told from its content)",
    )
    convert.add_argument(
        "--step",
        type=int,
        metavar="N",
        help="import: the number of the new checkpoint (0); export: which checkpoint of a run",
    )
    convert.add_argument("--field", default="model", help="import: the state field (model)")
    convert.add_argument(
        "--as-fields", action="store_true", help="import: top-level keys become state fields"
    )
    convert.add_argument(
        "--stateful",
        action="store_true",
        help="import: write Module(state: {...}), which a field typed nn.Module loads",
    )
    convert.add_argument("--config", metavar="FILE", help="import: the config.ron to record")
    convert.add_argument("--select", metavar="PATH", help="export: only this subtree (model)")
    convert.add_argument("--prefix", default="step", help="checkpoint directory prefix (step)")
    convert.set_defaults(run=_cmd_convert)

    edit = commands.add_parser(
        "set",
        help="edit the hyperparameters of a running experiment",
        description="Ask the run that checkpoints to RUN_DIR to apply path=value overrides at "
        "its next step(); the outcome is written next to the request (.applied / .rejected). "
        "The edit is checked first against the config.ron of the run's newest committed "
        "checkpoint: each path must name a field it has, each value must be of the kind the "
        "field holds there (see docs/cli.md); a bad edit is an error and nothing is written.",
        epilog="exit status: 0 requested (with --wait: applied), 1 rejected by the run (with "
        "--wait), 2 an error or, with --wait, no answer in time.\n\nexamples:\n"
        "  hyperstate set runs/exp1 optimizer.lr=1e-4\n"
        "  hyperstate set runs/exp1 'lr=step: 1e-4@0 cos 0@1e5' batch_size=64 --wait 300",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    edit.add_argument(
        "run_dir", metavar="RUN_DIR", help="the run's checkpoint_dir (any fsspec URL)"
    )
    edit.add_argument("overrides", nargs="+", metavar="path=value")
    edit.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=_DEFAULT_WAIT,
        metavar="SECONDS",
        help="wait until the run applied or rejected the edit, at most SECONDS "
        f"({_DEFAULT_WAIT:g} when not given), and print the outcome",
    )
    edit.add_argument(
        "--no-check",
        action="store_true",
        help="request the edit without checking it against config.ron (a union or Any "
        "field that holds another kind now); the run checks it all the same",
    )
    edit.set_defaults(run=_cmd_set)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or tcsh)",
        description="Print a script that completes hyperstate's commands and options in "
        "SHELL. Install it once, e.g. for bash: hyperstate completion bash > "
        "~/.local/share/bash-completion/completions/hyperstate",
        epilog="examples:\n  hyperstate completion bash > "
        "~/.local/share/bash-completion/completions/hyperstate\n"
        "  hyperstate completion zsh > ~/.zfunc/_hyperstate   # with fpath+=(~/.zfunc) in "
        "~/.zshrc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=_SHELLS, metavar="SHELL", help="bash, zsh or tcsh")
    completion.set_defaults(run=_cmd_completion)

    schema = commands.add_parser(
        "schema",
        help="schema evolution: dump-schema, check-schema, upgrade-schema, upgrade-config",
        description="Schema evolution commands for the config class given by --config-class.",
    )
    schema.add_argument(
        "--config-class",
        required=True,
        metavar="MODULE:CLASS",
        help="the config class, e.g. config:Config (the current directory is importable)",
    )
    schema_cli.add_commands(schema)
    return parser, schema


def _checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--step", type=int, metavar="N", help="with a run directory: checkpoint N, not the newest"
    )
    parser.add_argument("--prefix", default="step", help="checkpoint directory prefix (step)")


# ---------------------------------------------------------------------------------------
# Output helpers

_STYLES = {
    "key": "36",
    "type": "2",
    "tensor": "32",
    "head": "1",
    "good": "32",
    "bad": "31",
    "warn": "33",
}


class _Paint:
    """ANSI colours, on only when asked or when the stream is a terminal."""

    def __init__(self, mode: str, stream: TextIO) -> None:
        if mode == "auto":
            self.on = (
                _isatty(stream)
                and not os.environ.get("NO_COLOR")
                and os.environ.get("TERM") != "dumb"
            )
        else:
            self.on = mode == "always"

    def __call__(self, text: str, style: str) -> str:
        return f"\033[{_STYLES[style]}m{text}\033[0m" if self.on else text


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _print_json(value: Any) -> None:
    print(json.dumps(_json_ints(value), indent=2, ensure_ascii=False))


# Ints of fewer digits are written whatever sys.int_max_str_digits is set to.
_JSON_INT_BOUND = 10**640


def _json_ints(value: Any) -> Any:
    """``value`` with ints too long for ``json`` (a size or shape in a damaged file, say)
    as strings, abbreviated."""
    if type(value) is int:
        return value if -_JSON_INT_BOUND < value < _JSON_INT_BOUND else format_int(value)
    if type(value) is dict:
        return {k: _json_ints(v) for k, v in value.items()}
    if type(value) is list:
        return [_json_ints(v) for v in value]
    return value


def _json_number(value: float) -> float | str:
    """JSON has no inf or NaN: those become the strings "inf", "-inf" and "nan"."""
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


# ---------------------------------------------------------------------------------------
# Finding checkpoints


@dataclass
class _Target:
    """What a CKPT argument names: documents to read and where their blobs live."""

    label: str
    directory: str  # where state.ron's blob references resolve
    files: dict[str, str]  # "config" / "state" (or a file's stem) -> URL
    info: CheckpointInfo | None  # the committed checkpoint, if it is one


def _join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def _target(path: str, step: int | None, prefix: str, *, committed: bool = False) -> _Target:
    """Resolve a checkpoint directory, a run directory or a .ron file."""
    from hyperstate import _fs
    from hyperstate.storage import (
        COMMITTED,
        CONFIG_FILE,
        STATE_FILE,
        CheckpointStore,
        checkpoint_at,
    )

    def documents(info: CheckpointInfo) -> dict[str, str]:
        files = info.manifest.files
        return {
            name.removesuffix(".ron"): _join(info.path, name)
            for name in (CONFIG_FILE, STATE_FILE)
            if name in files
        }

    fs, fs_path = _fs.url_to_fs(path)
    url = path.rstrip("/") or path
    if fs.isfile(fs_path):
        if committed or not path.endswith(".ron"):
            raise _CommandError(f"{path}: expected a checkpoint directory or a run directory")
        stem = os.path.basename(fs_path).rsplit(".", 1)[0]
        return _Target(path, _fs.split_url(url)[0], {stem: path}, None)
    if not fs.isdir(fs_path):
        raise _CommandError(f"{path}: no such file or directory")
    info = checkpoint_at(url)
    if info is not None:
        if step is not None:
            raise _CommandError(f"{path} is a checkpoint; --step is for a run directory")
        return _Target(url, url, documents(info), info)
    present = [n for n in (CONFIG_FILE, STATE_FILE) if fs.exists(_join(fs_path, n))]
    if present and step is None:
        if committed:
            raise _CommandError(
                f"{path} is not committed (no {COMMITTED}): a save in progress, or one that crashed"
            )
        print(f"hyperstate: warning: {path} is not committed (no {COMMITTED})", file=sys.stderr)
        docs = {n.removesuffix(".ron"): _join(url, n) for n in sorted(present)}
        return _Target(url, url, docs, None)
    store = CheckpointStore(url, prefix=prefix)
    found = store.get(step) if step is not None else store.latest()
    if found is None:
        which = f"checkpoint {step}" if step is not None else "committed checkpoint"
        raise _CommandError(f"no {which} in {path}")
    return _Target(found.path, found.path, documents(found), found)


def _read_tree(target: _Target, url: str) -> Any:
    """The value tree of one of ``target``'s files: one inside a checkpoint directory must
    be a regular file there (a link out of it is refused, never quoted)."""
    from hyperstate import _fs, ron

    within = None if url == target.label else target.directory
    return ron.loads(_fs.read_text(url, within=within), path=url)


# ---------------------------------------------------------------------------------------
# ls


def _cmd_ls(args: argparse.Namespace) -> int:
    from hyperstate import _fs
    from hyperstate.storage import CheckpointStore, RetentionPolicy, read_metric

    policy = RetentionPolicy(args.keep_last, args.keep_every, args.keep_best, args.mode)
    if args.keep_best is not None and not args.best_field:
        raise _CommandError(
            "--keep-best needs --best-field (a numeric state field, e.g. eval.loss)"
        )
    store = CheckpointStore(args.run_dir, prefix=args.prefix)
    fs, fs_path = _fs.url_to_fs(args.run_dir)
    if not fs.isdir(fs_path):
        raise _CommandError(f"{args.run_dir}: no such directory")
    infos = store.list()
    numbers = [i.number for i in infos]
    metrics = None
    if args.keep_best is not None:
        metrics = {i.number: read_metric(i, args.best_field) for i in infos}
    kept = set(policy.keep(numbers, metrics))
    rows: list[dict[str, Any]] = []
    for info in infos:
        row: dict[str, Any] = {
            "number": info.number,
            "path": info.path,
            "created": info.manifest.created,
            "size": sum(e.size for e in info.manifest.files.values()),
            "committed": True,
            "keep": info.number in kept,
        }
        if metrics is not None:
            row["metric"] = _json_number(metrics[info.number])
        if args.long:
            run = info.manifest.run
            row["run"] = _run_json(run) if run is not None else None
        rows.append(row)
    for url in store.uncommitted():
        number = int(url.rstrip("/").rpartition("-")[2])
        _, dir_path = _fs.url_to_fs(url)
        try:
            size = int(fs.du(dir_path, total=True))
        except FileNotFoundError:  # removed meanwhile: a save that just finished or failed
            continue
        row = {"number": number, "path": url, "created": None, "size": size}
        row.update(committed=False, keep=None)
        if args.long:
            row["run"] = None
        rows.append(row)
    rows.sort(key=lambda r: (r["number"], r["committed"]), reverse=True)
    if args.json:
        rules = {
            "keep_last": args.keep_last,
            "keep_every": args.keep_every,
            "keep_best": args.keep_best,
            "best_field": args.best_field,
            "mode": args.mode,
        }
        _print_json({"run_dir": args.run_dir, "retention": rules, "checkpoints": rows})
        return 0
    paint = _Paint(args.color, sys.stdout)
    if not rows:
        print(f"no checkpoints in {args.run_dir}")
        return 0
    table = [("NUMBER", "CREATED", "SIZE", "STATUS", "RETENTION")]
    for r in rows:
        created = r["created"].replace("T", " ").replace("+00:00", " UTC") if r["created"] else "-"
        keep = "-" if r["keep"] is None else ("keep" if r["keep"] else "delete")
        status = "committed" if r["committed"] else "uncommitted"
        table.append((str(r["number"]), created, _size(r["size"]), status, keep))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    runs = {info.number: info.manifest.run for info in infos}
    for n, cols in enumerate(table):
        cells = [
            cell.ljust(w) if i != 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cols, widths, strict=True))
        ]
        line = "  ".join(cells).rstrip()
        if n == 0:
            line = paint(line, "head")
        elif cols[3] == "uncommitted":
            line = paint(line, "warn")
        elif cols[4] == "delete":
            line = paint(line, "type")
        print(line)
        if args.long and n and cols[3] == "committed":
            run = runs.get(rows[n - 1]["number"])
            if run is None:
                print("    (no run metadata: an older checkpoint)")
                continue
            for key, value in _run_lines(run):
                print(f"    {paint(key, 'key')}: {value}")
    return 0


def _size(nbytes: int) -> str:
    from hyperstate.tools.convert import format_size

    return format_size(nbytes)


# ---------------------------------------------------------------------------------------
# show


def _cmd_show(args: argparse.Namespace) -> int:
    from hyperstate.tools.convert import ConvertError, iter_tensors, parse_path, resolve

    target = _target(args.ckpt, args.step, args.prefix)
    trees = {name: _read_tree(target, url) for name, url in target.files.items()}
    if not trees:
        raise _CommandError(f"{target.label} has no config.ron or state.ron")
    if args.field:
        found: dict[str, Any] = {}
        errors: list[str] = []
        first = parse_path(args.field)[0]
        for name, tree in trees.items():
            try:
                found[name] = resolve(tree, args.field)
            except ConvertError as e:
                errors.append(f"{name}: {e}")
            if first == name and len(parse_path(args.field)) > 1 and name not in found:
                try:
                    found[name] = resolve(tree, parse_path(args.field)[1:])
                    errors.pop()
                except ConvertError:
                    pass
        if not found:
            raise _CommandError(f"no field {args.field} in {target.label} ({'; '.join(errors)})")
        if args.json:
            _print_json({name: _json_tree(node) for name, node in found.items()})
            return 0
        paint = _Paint(args.color, sys.stdout)
        for name, node in found.items():
            label = args.field if len(found) == 1 else f"{name}.{args.field}"
            for line in _tree_lines(node, label, 0, paint):
                print(line)
        return 0
    run = target.info.manifest.run if target.info is not None else None
    if args.json:
        shown = {name: _json_tree(tree) for name, tree in trees.items()}
        if run is not None:
            shown["run"] = _run_json(run)
        _print_json(shown)
        return 0
    paint = _Paint(args.color, sys.stdout)
    for n, (name, tree) in enumerate(trees.items()):
        if n:
            print()
        summary = ""
        tensors = [info for _, info, _ in iter_tensors(tree)]
        if tensors:
            total = sum(t.nbytes or 0 for t in tensors)
            summary = f": {len(tensors)} tensor{'s' if len(tensors) != 1 else ''}, {_size(total)}"
        print(paint(f"{name} ({target.files[name]}){summary}", "head"))
        for line in _tree_lines(tree, None, 0, paint):
            print(line)
    if run is not None and target.info is not None:
        from hyperstate.storage import COMMITTED

        print()
        print(paint(f"run ({_join(target.info.path, COMMITTED)})", "head"))
        for key, value in _run_lines(run):
            print(f"  {paint(key, 'key')}: {value}")
    return 0


def _run_lines(run: RunInfo) -> list[tuple[str, str]]:
    """The run metadata of a checkpoint as ``(label, text)`` lines."""
    import shlex

    ranks = f"{run.world_size} rank{'s' if run.world_size != 1 else ''}"
    if run.hosts:
        ranks += f" on {', '.join(run.hosts)}"
    git = run.git_commit
    if run.git_dirty:
        git += " (dirty: uncommitted changes)"
    lines = [
        ("command", shlex.join(run.argv) if run.argv else "unknown"),
        ("ranks", ranks),
        ("git", git),
        ("versions", f"hyperstate {run.hyperstate}, torch {run.torch}, Python {run.python}"),
    ]
    if run.wall_seconds is not None:
        lines.append(("wall time", f"{_duration(run.wall_seconds)} since the run started"))
    return lines


def _run_json(run: RunInfo) -> dict[str, Any]:
    return {
        "hyperstate": run.hyperstate,
        "torch": run.torch,
        "python": run.python,
        "world_size": run.world_size,
        "hosts": list(run.hosts),
        "argv": list(run.argv),
        "git_commit": run.git_commit,
        "git_dirty": run.git_dirty,
        "wall_seconds": run.wall_seconds,
    }


def _duration(seconds: float) -> str:
    """``3725.2`` -> ``1h 2m 5s``; under a minute with one decimal."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s"


_INLINE_WIDTH = 80
_LIST_PREVIEW = 6


def _tree_lines(node: Any, label: str | None, depth: int, paint: _Paint) -> Iterator[str]:
    """The lines that show ``node`` (and what is under it), indented by ``depth``."""
    from hyperstate import ron
    from hyperstate.tools.convert import children, is_container, tensor_info, type_name

    lead = "  " * depth + (paint(str(label), "key") + ": " if label is not None else "")
    info = tensor_info(node)
    if info is not None:
        yield lead + paint(info.describe(), "tensor")
        return
    if not is_container(node):
        yield lead + _leaf_text(node)
        return
    kids = children(node)
    name = type_name(node)
    leaves = all(not is_container(c) and tensor_info(c) is None for _, c in kids)
    if kids and leaves and type(node) in (list, tuple):
        inline = ron.dumps(node)
        if "\n" not in inline and len(inline) <= _INLINE_WIDTH:
            yield lead + inline
            return
        if type(node) is list and len(node) > _LIST_PREVIEW:
            shown = ", ".join(_leaf_text(v) for v in node[: _LIST_PREVIEW - 1])
            more = f"... {_leaf_text(node[-1])}] ({len(node)} items)"
            preview = f"[{shown}, {more}"
            if len(preview) <= _INLINE_WIDTH * 2:
                yield lead + preview
                return
    if name:
        head = name
    elif type(node) is list:
        head = f"[{len(kids)} item{'s' if len(kids) != 1 else ''}]"
    elif type(node) is tuple:
        head = f"({len(kids)} items)"
    else:
        head = f"{{{len(kids)} entr{'ies' if len(kids) != 1 else 'y'}}}"
    if not kids:
        head = f"{name}()" if name else ("{}" if type(node) is dict else ron.dumps(node))
    yield lead + paint(head, "type")
    for seg, child in kids:
        child_label = f"[{seg}]" if type(node) in (list, tuple) else _segment(seg)
        yield from _tree_lines(child, child_label, depth + 1, paint)


def _segment(seg: Any) -> str:
    """A map key or field name as a label; an int key of any length."""
    return format_int(seg) if type(seg) is int else str(seg)


def _leaf_text(value: Any) -> str:
    from hyperstate import ron

    try:
        text = ron.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text


def _json_tree(node: Any) -> Any:
    """A value tree as JSON: structs as objects (names dropped), tensors as
    ``{"__tensor__": {...}}``, non-finite floats as strings."""
    from hyperstate import ron
    from hyperstate.tools.convert import children, is_container, tensor_info

    info = tensor_info(node)
    if info is not None:
        out: dict[str, Any] = {"kind": info.kind, "dtype": info.dtype, "shape": list(info.shape)}
        out["nbytes"] = info.nbytes
        if info.inline:
            out["value"] = _json_tree(info.value)
        if info.checksum is not None:
            out["checksum"] = info.checksum
        if info.shards is not None:
            out["shards"] = info.shards
        if info.device is not None:
            out["device"] = info.device
        return {"__tensor__": out}
    if is_container(node):
        kids = children(node)
        if type(node) in (list, tuple, ron.TupleStruct) or (
            type(node) is ron.Some and type(node.value) in (list, tuple)
        ):
            return [_json_tree(c) for _, c in kids]
        return {_segment(seg): _json_tree(c) for seg, c in kids}
    if type(node) is ron.Some:
        return _json_tree(node.value)
    if type(node) is ron.Ident:
        return node.name
    if isinstance(node, float):
        return _json_number(node)
    if isinstance(node, bytes):
        return node.hex()
    return node


# ---------------------------------------------------------------------------------------
# verify


def _cmd_verify(args: argparse.Namespace) -> int:
    from hyperstate.storage import CheckpointStore

    if args.all:
        if args.step is not None:
            raise _CommandError("--all and --step exclude each other")
        store = CheckpointStore(args.ckpt, prefix=args.prefix)
        checks = [(store, info) for info in store.list()]
        if not checks:
            raise _CommandError(f"no committed checkpoint in {args.ckpt}")
    else:
        info = _target(args.ckpt, args.step, args.prefix, committed=True).info
        assert info is not None
        # A store on the checkpoint directory itself: a copy may have any name.
        checks = [(CheckpointStore(info.path), info)]
    total = sum(e.size for _, i in checks for e in i.manifest.files.values())
    progress = _Progress(total, _isatty(sys.stderr))
    results = []
    try:
        for store, info in checks:
            results.append((info, store.verify(info, progress=progress)))
    finally:
        progress.close()
    bad = any(p.fatal for _, problems in results for p in problems)
    if args.json:
        out = [
            {
                "path": info.path,
                "number": info.number,
                "ok": not any(p.fatal for p in problems),
                "files": len(info.manifest.files),
                "bytes": sum(e.size for e in info.manifest.files.values()),
                "problems": [
                    {"path": p.path, "kind": p.kind, "message": p.message} for p in problems
                ],
            }
            for info, problems in results
        ]
        _print_json({"ok": not bad, "checkpoints": out})
        return 1 if bad else 0
    paint = _Paint(args.color, sys.stdout)
    for info, problems in results:
        files = len(info.manifest.files)
        size = _size(sum(e.size for e in info.manifest.files.values()))
        fatal = [p for p in problems if p.fatal]
        verdict = paint("BAD", "bad") if fatal else paint("ok", "good")
        print(f"{verdict} {info.path} ({files} file{'s' if files != 1 else ''}, {size})")
        for p in problems:
            style = "bad" if p.fatal else "warn"
            print(f"  {paint(p.kind.ljust(10), style)} {p.message}")
    if bad:
        count = sum(1 for _, problems in results for p in problems if p.fatal)
        print(
            f"hyperstate verify: error: {count} bad file{'s' if count != 1 else ''}",
            file=sys.stderr,
        )
    return 1 if bad else 0


class _Progress:
    """A one-line progress report on stderr, drawn only when stderr is a terminal.

    Called as ``CheckpointStore.verify``'s progress hook: each file's calls end at its
    size, so what is done is the files finished plus the one being read.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.finished = 0  # bytes of the files checked to the end
        self._last = -math.inf

    def __call__(self, name: str, done: int, size: int) -> None:
        so_far = self.finished + done
        if done == size:
            self.finished += size
        now = time.monotonic()
        if self.enabled and (now - self._last >= 0.1 or so_far >= self.total):
            self._last = now
            share = so_far / self.total if self.total else 1.0
            bar = "#" * int(share * 20)
            sys.stderr.write(
                f"\r\033[Kverifying [{bar:<20}] {share:4.0%} {_size(so_far)} / "
                f"{_size(self.total)} {name}"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._last != -math.inf:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------
# diff


@dataclass
class _Change:
    path: str
    change: str  # "changed", "added", "removed"
    a: Any
    b: Any
    max_abs_diff: float | None = None
    default: str | None = None  # "a" or "b": that side leaves the field out (its default)


def _cmd_diff(args: argparse.Namespace) -> int:
    a = _target(args.a, None, "step")
    b = _target(args.b, None, "step")
    defaults = _diff_schema(args)
    if len(a.files) == 1 and len(b.files) == 1:
        pairs = [("", next(iter(a.files.values())), next(iter(b.files.values())))]
    else:
        shared = [n for n in a.files if n in b.files]
        if not shared:
            raise _CommandError(f"nothing to compare: {a.label} and {b.label} share no .ron file")
        pairs = [(n, a.files[n], b.files[n]) for n in shared]
    changes: list[_Change] = []
    for name, url_a, url_b in pairs:
        # The schema describes the config: a config.ron, or a .ron file given as such.
        typed = defaults is not None and name in ("", "config")
        root = _Typed(defaults, _StructRef(defaults.root)) if typed and defaults else None
        tree_a, tree_b = _read_tree(a, url_a), _read_tree(b, url_b)
        sums = {**_grid_sums(tree_a, a.directory), **_grid_sums(tree_b, b.directory)}
        token = _SHARD_SUMS.set(sums)
        try:
            _diff(tree_a, tree_b, [name] if name else [], changes, root)
        finally:
            _SHARD_SUMS.reset(token)
    if args.values:
        readers: tuple[dict[str, BlobReader], dict[str, BlobReader]] = ({}, {})
        for c in changes:
            if c.change == "changed" and c.default is None:
                c.max_abs_diff = _max_abs_diff(c.a, c.b, a.directory, b.directory, readers)
    if args.json:
        out = []
        for c in changes:
            item: dict[str, Any] = {"path": c.path, "change": c.change}
            if c.change != "added":
                item["a"] = _json_tree(c.a)
            if c.change != "removed":
                item["b"] = _json_tree(c.b)
            if c.max_abs_diff is not None:
                item["max_abs_diff"] = _json_number(c.max_abs_diff)
            if c.default is not None:
                item["default"] = c.default
            out.append(item)
        _print_json({"a": a.label, "b": b.label, "differences": out})
    else:
        paint = _Paint(args.color, sys.stdout)
        for c in changes:
            if c.change == "added":
                print(paint(f"+ {c.path}: {_brief(c.b)}", "good"))
            elif c.change == "removed":
                print(paint(f"- {c.path}: {_brief(c.a)}", "bad"))
            else:
                text = _change_text(c.a, c.b)
                if c.default is not None:
                    text += f" ({c.default.upper()} leaves it out: its default)"
                print(paint(f"~ {c.path}: {text}", "warn"))
                if c.max_abs_diff is not None:
                    print(f"    max abs diff {c.max_abs_diff:.6g}")
        if changes:
            n = len(changes)
            print(f"{n} difference{'s' if n != 1 else ''}")
        else:
            print("no differences")
    return 1 if changes and args.exit_code else 0


def _diff_schema(args: argparse.Namespace) -> Any:
    """The schema that ``--schema`` or ``--config-class`` gives, or None."""
    if args.schema and args.config_class:
        raise _CommandError("--schema and --config-class exclude each other")
    if args.schema:
        from hyperstate.schema.model import load_schema

        return load_schema(args.schema)
    if args.config_class:
        from hyperstate.schema.model import schema_of_class

        try:
            return schema_of_class(_import_class(args.config_class))
        except (AttributeError, TypeError) as e:
            raise _CommandError(f"--config-class {args.config_class}: {e}") from None
    return None


@dataclass(frozen=True)
class _StructRef:
    name: str


@dataclass(frozen=True)
class _Typed:
    """What a schema says of a node being compared: its type, if known."""

    schema: Any  # hyperstate.schema.model.Schema
    type: Any  # a TypeDef of that schema, or a _StructRef to the root

    def struct(self, node: Any) -> Any:
        """The StructDef of ``node``, when the type (or the node's name) gives one."""
        from hyperstate.schema import model
        from hyperstate.tools.convert import type_name

        typedef = self.type
        while isinstance(typedef, model.OptionOf):
            typedef = typedef.inner
        if isinstance(typedef, model.UnionOf):
            name = type_name(node)
            typedef = next(
                (o for o in typedef.options if isinstance(o, model.StructRef) and o.name == name),
                None,
            )
        if isinstance(typedef, model.StructRef | _StructRef):
            return self.schema.struct(typedef.name)
        name = type_name(node)
        return self.schema.struct(name) if name and typedef is None else None

    def child(self, node: Any, seg: Any) -> _Typed | None:
        """What the schema says of child ``seg`` of ``node``."""
        from hyperstate.schema import model

        struct = self.struct(node)
        if struct is not None:
            field = struct.field(seg) if isinstance(seg, str) else None
            return _Typed(self.schema, field.type) if field is not None else None
        typedef = self.type
        while isinstance(typedef, model.OptionOf):
            typedef = typedef.inner
        if isinstance(typedef, model.ListOf | model.VarTupleOf):
            return _Typed(self.schema, typedef.item)
        if isinstance(typedef, model.TupleOf) and type(seg) is int and seg < len(typedef.items):
            return _Typed(self.schema, typedef.items[seg])
        if isinstance(typedef, model.DictOf):
            return _Typed(self.schema, typedef.value)
        return None

    def default(self, node: Any, seg: Any) -> tuple[bool, Any]:
        """``(True, value)`` when field ``seg`` of struct ``node`` has a known default."""
        struct = self.struct(node)
        field = struct.field(seg) if struct is not None and isinstance(seg, str) else None
        if field is None or not field.has_default:
            return False, None
        return True, field.default


def _diff(a: Any, b: Any, path: list[Any], out: list[_Change], typed: _Typed | None) -> None:
    """Compare two value trees as typed values: ``Some(x)`` is ``x``, a tuple is a list,
    an unnamed struct matches a named one; the differences go to ``out``."""
    from hyperstate.tools.convert import children, dotted_name, is_container, tensor_info, type_name

    a, b = _opened(a), _opened(b)
    where = dotted_name(path)
    ta, tb = tensor_info(a), tensor_info(b)
    if ta is not None or tb is not None:
        if ta is None or tb is None or _tensor_key(ta, a) != _tensor_key(tb, b):
            out.append(_Change(where, "changed", a, b))
        return
    if not (is_container(a) and is_container(b)):
        if not _same_leaf(a, b):
            out.append(_Change(where, "changed", a, b))
        return
    if _sequence(a) and _sequence(b):
        _diff_sequence(a, b, path, out, typed)
        return
    name_a, name_b = type_name(a), type_name(b)
    if _sequence(a) != _sequence(b) or (name_a and name_b and name_a != name_b):
        out.append(_Change(where, "changed", a, b))
        return
    kids_a, kids_b = dict(children(a)), dict(children(b))
    for seg, child in kids_a.items():
        sub = typed.child(a, seg) if typed is not None else None
        if seg in kids_b:
            _diff(child, kids_b[seg], [*path, seg], out, sub)
        else:
            _diff_default(child, "b", a, seg, [*path, seg], out, typed)
    for seg, child in kids_b.items():
        if seg not in kids_a:
            _diff_default(child, "a", b, seg, [*path, seg], out, typed)


def _diff_default(
    present: Any,
    absent: str,
    parent: Any,
    seg: Any,
    path: list[Any],
    out: list[_Change],
    typed: _Typed | None,
) -> None:
    """A field that side ``absent`` leaves out: equal to ``present`` when its default is
    (known from the schema), else an added or removed field."""
    from hyperstate.tools.convert import dotted_name

    where = dotted_name(path)
    known, default = typed.default(parent, seg) if typed is not None else (False, None)
    if not known:
        if absent == "a":
            out.append(_Change(where, "added", None, present))
        else:
            out.append(_Change(where, "removed", present, None))
        return
    if _key(_plain_tree(present)) == _key(_plain_tree(default)):
        return
    a, b = (default, present) if absent == "a" else (present, default)
    out.append(_Change(where, "changed", a, b, default=absent))


def _diff_sequence(
    a: Any, b: Any, path: list[Any], out: list[_Change], typed: _Typed | None
) -> None:
    """Two lists (or tuples): items that only one side has show as added or removed (at
    B's index, or A's for a removed one), items in the same place are compared."""
    import difflib

    from hyperstate.tools.convert import children, dotted_name

    items_a = [c for _, c in children(a)]
    items_b = [c for _, c in children(b)]
    opcodes: Sequence[tuple[str, int, int, int, int]]
    if len(items_a) * len(items_b) > _MATCH_LIMIT:
        # Too long to match items up: compare by index, and what one side has beyond.
        common = min(len(items_a), len(items_b))
        opcodes = [
            ("replace", 0, common, 0, common),
            ("delete", common, len(items_a), common, common),
            ("insert", common, common, common, len(items_b)),
        ]
    else:
        keys_a = [_key(x) for x in items_a]
        keys_b = [_key(x) for x in items_b]
        matcher = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
        opcodes = matcher.get_opcodes()
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1)
        for k in range(paired):
            sub = typed.child(b, j1 + k) if typed is not None else None
            _diff(items_a[i1 + k], items_b[j1 + k], [*path, j1 + k], out, sub)
        for i in range(i1 + paired, i2):
            out.append(_Change(dotted_name([*path, i]), "removed", items_a[i], None))
        for j in range(j1 + paired, j2):
            out.append(_Change(dotted_name([*path, j]), "added", None, items_b[j]))


# Lists longer than this (items of A times items of B) are compared index by index.
_MATCH_LIMIT = 4_000_000


def _opened(node: Any) -> Any:
    from hyperstate import ron

    while type(node) is ron.Some:
        node = node.value
    return node


def _key(node: Any) -> Any:
    """A hashable key of a value tree: equal for values that compare equal here."""
    from hyperstate import ron
    from hyperstate.tools.convert import children, is_container, tensor_info, type_name

    node = _opened(node)
    info = tensor_info(node)
    if info is not None:
        return ("tensor", repr(_tensor_key(info, node)))
    if is_container(node):
        kind = "seq" if _sequence(node) else "map"
        items = tuple((seg, _key(child)) for seg, child in children(node))
        return (kind, type_name(node) if kind == "map" else None, items)
    if type(node) is bool:
        return ("bool", node)
    if isinstance(node, float) and math.isnan(node):
        return ("nan",)
    if isinstance(node, int | float):
        return ("number", node)
    if type(node) is ron.Ident:
        return ("ident", node.name)
    try:
        hash(node)
    except TypeError:
        return ("text", _leaf_text(node))
    return ("value", type(node).__name__, node)


def _plain_key(key: Any) -> Any:
    from hyperstate import ron

    key = _opened(key)
    if type(key) is ron.Ident:
        return key.name
    if type(key) is tuple:
        return tuple(_plain_key(k) for k in key)
    return key


def _plain_tree(node: Any) -> Any:
    """A value tree as a schema's default is written: structs as maps without their
    name, tuples as lists, variants by name."""
    from hyperstate import ron

    node = _opened(node)
    kind = type(node)
    if kind is ron.Struct:
        return {k: _plain_tree(v) for k, v in node.fields.items()}
    if kind is dict:
        return {_plain_key(k): _plain_tree(v) for k, v in node.items()}
    if kind in (list, tuple):
        return [_plain_tree(v) for v in node]
    if kind is ron.TupleStruct:
        return [_plain_tree(v) for v in node.items]
    if kind is ron.Ident:
        return node.name
    return node


def _sequence(node: Any) -> bool:
    from hyperstate import ron

    if type(node) is ron.Some:
        return _sequence(node.value)
    return type(node) in (list, tuple, ron.TupleStruct)


# The checksums of the shards of each Grid record in the trees being compared, by id():
# a Grid record names no checksum, each rank's blob file lists its own.
_SHARD_SUMS: contextvars.ContextVar[dict[int, tuple[str, ...]] | None] = contextvars.ContextVar(
    "hyperstate_shard_sums", default=None
)


def _grid_sums(tree: Any, directory: str | None) -> dict[int, tuple[str, ...]]:
    """The shard checksums of every ``shards: Grid(...)`` record in ``tree``, by id(),
    from the checksum tables of the rank files in ``directory`` (checked as a load
    checks them). A shard whose file lists no checksum gets a value that equals no other,
    so the tensor shows as changed rather than unchanged unseen."""
    from hyperstate.ron import Struct
    from hyperstate.tensors import codec
    from hyperstate.tensors.safetensors import BlobReader
    from hyperstate.tools.convert import children, is_container

    out: dict[int, tuple[str, ...]] = {}
    if directory is None:
        return out
    readers: dict[str, BlobReader] = {}  # one per rank file: its table is read once

    def checksum(file: str, key: str) -> str:
        reader = readers.get(file)
        if reader is None:
            reader = readers[file] = BlobReader(directory, file)
        return reader.checksum_of(key)

    stack = [tree]
    try:
        while stack:
            node = stack.pop()
            if type(node) is Struct and type(node.fields.get("shards")) is Struct:
                sharded = codec.sharded_of(node, ())
                assert sharded.grid is not None
                grid = sharded.grid
                out[id(node)] = tuple(
                    checksum(codec.rank_file(grid.files, rank), grid.key) or f"unknown {id(node)}"
                    for rank, _, _ in grid.cells(sharded.shape)
                )
            elif is_container(node):
                stack.extend(child for _, child in children(node))
    finally:
        for reader in readers.values():
            reader.close()
    return out


def _tensor_key(info: Any, node: Any) -> tuple[Any, ...]:
    """What must be equal for two tensor references to hold the same tensor."""
    sums = (_SHARD_SUMS.get() or {}).get(id(node))
    if sums is not None:  # a Grid record: its shards' checksums
        return (info.kind, info.dtype, info.shape, sums)
    if info.inline:
        value = info.value
        nan = isinstance(value, float) and math.isnan(value)
        return (info.kind, info.dtype, "nan" if nan else value)
    if info.checksum is not None:
        return (info.kind, info.dtype, info.shape, info.checksum)
    # Sharded and other forms: equal when written alike (the shards' checksums included).
    return (info.kind, node)


def _same_leaf(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    try:
        return bool(a == b)
    except Exception:  # a value whose == is unusual; different then
        return False


def _change_text(a: Any, b: Any) -> str:
    from hyperstate.tools.convert import tensor_info

    ta, tb = tensor_info(a), tensor_info(b)
    if ta is not None and tb is not None and not ta.inline and ta.describe() == tb.describe():
        # Same dtype and shape: only the bytes differ.
        if ta.checksum is None or tb.checksum is None:  # shards with their own checksums
            return f"{ta.describe()}, the bytes of its shards differ"
        return f"{ta.describe()}, checksum {ta.checksum} -> {tb.checksum}"
    return f"{_brief(a)} -> {_brief(b)}"


def _brief(node: Any) -> str:
    from hyperstate.tools.convert import children, is_container, tensor_info, type_name

    info = tensor_info(node)
    if info is not None:
        text = info.describe()
        if info.checksum is not None:
            text += f" {info.checksum}"
        return text
    if is_container(node):
        inline = _one_line(node, _INLINE_WIDTH)
        if inline is not None:
            return inline
        name = type_name(node)
        n = len(children(node))
        if name:
            return f"{name}(...)"
        if _sequence(node):
            return f"[{n} item{'s' if n != 1 else ''}]"
        return f"{{{n} entr{'ies' if n != 1 else 'y'}}}"
    text = _leaf_text(node)
    return text if len(text) <= _INLINE_WIDTH else text[: _INLINE_WIDTH - 3] + "..."


def _one_line(node: Any, budget: int) -> str | None:
    """``node`` as RON on one line when it holds no tensor and fits in ``budget``
    characters (``Layer(width: 4)``), else None."""
    from hyperstate import ron
    from hyperstate.tools.convert import tensor_info

    if budget <= 0 or tensor_info(node) is not None:
        return None
    kind = type(node)
    if kind is ron.Some:
        inner = _one_line(node.value, budget - 6)
        return None if inner is None else f"Some({inner})"
    if kind in (ron.Struct, dict, list, tuple, ron.TupleStruct):
        if kind is ron.Struct:
            pairs: list[tuple[Any, Any]] = list(node.fields.items())
            opening, closing = f"{node.name or ''}(", ")"
        elif kind is dict:
            pairs = list(node.items())
            opening, closing = "{", "}"
        else:
            pairs = [(None, v) for v in (node.items if kind is ron.TupleStruct else node)]
            opening = f"{node.name}(" if kind is ron.TupleStruct else ("[" if kind is list else "(")
            closing = "]" if kind is list else ")"
        parts: list[str] = []
        used = len(opening) + len(closing)
        for key, value in pairs:
            if key is None:
                label = ""
            elif kind is ron.Struct:
                label = f"{key}: "
            else:
                shown = _one_line(key, budget - used)
                if shown is None:
                    return None
                label = f"{shown}: "
            text = _one_line(value, budget - used - len(label))
            if text is None:
                return None
            parts.append(label + text)
            used += len(label) + len(text) + 2
            if used > budget + 2:
                return None
        return opening + ", ".join(parts) + closing
    text = _leaf_text(node)
    return text if "\n" not in text and len(text) <= budget else None


def _max_abs_diff(
    a: Any,
    b: Any,
    dir_a: str,
    dir_b: str,
    readers: tuple[dict[str, BlobReader], dict[str, BlobReader]],
) -> float | None:
    """The largest absolute elementwise difference of two tensors of the same shape."""
    from hyperstate.tools.convert import read_tensor, tensor_info

    ta, tb = tensor_info(a), tensor_info(b)
    if ta is None or tb is None or ta.shape != tb.shape:
        return None
    import torch

    x, y = read_tensor(dir_a, a, readers[0]), read_tensor(dir_b, b, readers[1])
    if x.numel() == 0:
        return 0.0
    wide = torch.complex128 if x.is_complex() or y.is_complex() else torch.float64
    return float((x.to(wide) - y.to(wide)).abs().max().item())


# ---------------------------------------------------------------------------------------
# schedule


def _cmd_schedule(args: argparse.Namespace) -> int:
    from hyperstate.schedule import parse

    schedule = parse(args.schedule)
    first, last = schedule.points[0].x, schedule.points[-1].x
    start = first if args.start is None else args.start
    end = last if args.end is None else args.end
    if end == start and args.end is None:
        end = start + 1
    if end <= start:
        raise _CommandError(f"expected --to greater than {_num(start)}, found {_num(end)}")
    if args.points < 2 or args.width < 8 or args.height < 3:
        raise _CommandError("expected --points >= 2, --width >= 8 and --height >= 3")
    xs = [start + (end - start) * i / (args.points - 1) for i in range(args.points)]
    values = [(x, schedule.value_at(x)) for x in xs]
    if args.png:
        _write_png(schedule, start, end, args.png)
    if args.json:
        out: dict[str, Any] = {
            "schedule": schedule.text,
            "x": ".".join(schedule.x),
            "values": [{"x": x, "value": _json_number(v)} for x, v in values],
        }
        if args.png:
            out["png"] = args.png
        _print_json(out)
        return 0
    paint = _Paint(args.color, sys.stdout)
    x_name = ".".join(schedule.x)
    print(paint(schedule.text, "head"))
    width = max(len(x_name), *(len(_num(x)) for x in xs))
    print(f"  {x_name.rjust(width)}  value")
    for x, v in values:
        print(f"  {_num(x).rjust(width)}  {v:.6g}")
    print()
    for line in _plot(schedule, start, end, args.width, args.height, _charset(sys.stdout)):
        print(line)
    if args.png:
        print(f"wrote {args.png}")
    return 0


def _num(x: float) -> str:
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"


def _charset(stream: TextIO) -> tuple[str, str, str, str, str]:
    """Dot, vertical axis, tick, corner and horizontal axis: Unicode when it can be written."""
    unicode = ("•", "│", "┤", "└", "─")
    try:
        "".join(unicode).encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ("*", "|", "+", "+", "-")
    return unicode


def _plot(
    schedule: Schedule,
    start: float,
    end: float,
    width: int,
    height: int,
    chars: tuple[str, str, str, str, str],
) -> list[str]:
    """The schedule drawn on a ``height`` x ``width`` grid of characters, with axes."""
    dot, vertical, tick, corner, horizontal = chars
    xs = [start + (end - start) * i / (width - 1) for i in range(width)]
    ys = [schedule.value_at(x) for x in xs]
    low, high = min(ys), max(ys)
    span = high - low if high > low else 1.0
    grid = [[" "] * width for _ in range(height)]
    for column, y in enumerate(ys):
        row = round((y - low) / span * (height - 1)) if high > low else height // 2
        grid[height - 1 - row][column] = dot
    labels = {0: f"{high:.4g}", height - 1: f"{low:.4g}"}
    margin = max(len(s) for s in labels.values())
    lines = []
    for r, cells in enumerate(grid):
        axis = tick if r in labels else vertical
        lines.append(f"{labels.get(r, '').rjust(margin)} {axis}{''.join(cells).rstrip()}")
    lines.append(" " * margin + " " + corner + horizontal * width)
    left, right = _num(start), _num(end)
    gap = max(1, width - len(left) - len(right) + 1)
    lines.append(" " * (margin + 1) + left + " " * gap + right + f"  ({'.'.join(schedule.x)})")
    return lines


def _write_png(schedule: Schedule, start: float, end: float, path: str) -> None:
    from hyperstate import _fs

    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise _CommandError(f"--png needs matplotlib: {_PNG_HINT}") from None
    samples = 400
    xs = [start + (end - start) * i / (samples - 1) for i in range(samples)]
    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="tight")
    axes = figure.subplots()
    axes.plot(xs, [schedule.value_at(x) for x in xs])
    axes.set_xlabel(".".join(schedule.x))
    axes.set_title(schedule.text, fontsize=9)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _fs.write_atomic(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------
# convert


def _cmd_convert(args: argparse.Namespace) -> int:
    from hyperstate.tools.convert import detect_format, export, export_format, import_checkpoint

    fmt = detect_format(args.src) if args.format == "auto" else args.format
    if fmt == "hyperstate":
        export_format(args.dst)  # an ending that names no format fails before any reading
        target = _target(args.src, args.step, args.prefix)
        if "state" not in target.files:
            raise _CommandError(f"{target.label} has no state.ron")
        names = export(target.directory, args.dst, select=args.select)
        n = len(names)
        print(f"wrote {n} tensor{'s' if n != 1 else ''} from {target.label} to {args.dst}")
        return 0
    if args.select:
        raise _CommandError("--select is for exporting a hyperstate checkpoint")
    if args.as_fields and args.field != "model":
        raise _CommandError("--as-fields and --field exclude each other")
    info = import_checkpoint(
        args.src,
        args.dst,
        format=fmt,
        number=args.step if args.step is not None else 0,
        field=None if args.as_fields else args.field,
        stateful=args.stateful,
        config=args.config,
    )
    print(f"wrote {info.path} (from {fmt} {args.src})")
    return 0


# ---------------------------------------------------------------------------------------
# set, schema


def _cmd_set(args: argparse.Namespace) -> int:
    from hyperstate import _fs
    from hyperstate.edits import check_edit, request_edit, wait_for_edit

    wait = args.wait
    if wait is not None and not (math.isfinite(wait) and wait >= 0):
        raise _CommandError(f"expected --wait SECONDS >= 0, found {wait:g}")
    if args.no_check:
        fs, fs_path = _fs.url_to_fs(args.run_dir)
        if not fs.isdir(fs_path):
            raise _CommandError(
                f"{args.run_dir}: no such directory; expected the checkpoint_dir of a run"
            )
    else:
        check_edit(args.run_dir, args.overrides)
    request = request_edit(args.run_dir, args.overrides)
    print(f"requested: {request}", flush=True)
    if wait is None:
        return 0
    outcome = wait_for_edit(request, wait)
    if outcome is None:
        raise _CommandError(
            f"no answer from the run within {_num(wait)} s; the request stays pending (the "
            "run looks for edits at its step(), every edit_check_seconds): "
            f"{request}"
        )
    if not outcome.applied:
        print(f"rejected: {outcome.report}")
        return 1
    if not outcome.report:
        print("applied: no field changed")
    for line in outcome.report.splitlines():
        print(f"applied: {line}")
    return 0


# Positional arguments completed as paths (every other one is completed as an option or a
# choice): what `hyperstate completion` tells the shell.
_PATH_ARGUMENTS = {
    "run_dir": "dir",
    "ckpt": "file",
    "a": "file",
    "b": "file",
    "src": "file",
    "dst": "file",
    "png": "file",
    "config": "file",
    "schema": "file",
}


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    kinds = {"file": shtab.FILE, "dir": shtab.DIRECTORY}
    parsers = [args.parser]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.dest in _PATH_ARGUMENTS and parser is not args.parser:
                action.complete = kinds[_PATH_ARGUMENTS[action.dest]]
    sys.stdout.write(shtab.complete(args.parser, shell=args.shell))
    return 0


def _cmd_schema(args: argparse.Namespace, schema: argparse.ArgumentParser) -> int:
    if args.command is None:
        schema.print_help()
        return 0
    try:
        config_clz = _import_class(args.config_class)
    except (ImportError, AttributeError, ValueError) as e:
        print(f"hyperstate schema: error: {e}", file=sys.stderr)
        return 2
    return schema_cli.run_command(config_clz, args)


def _import_class(spec: str) -> type:
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"expected MODULE:CLASS (e.g. config:Config), found {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{spec} is not a class")
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
