"""Who writes which tensor of a checkpoint: the plan every rank computes alike.

Every rank encodes the whole state with a :class:`BlobPlan` as the sink of its tensors:
the tensors are collected as :class:`Planned` items, not written. :func:`assign` then
says, with no communication, which items each rank writes; :meth:`BlobPlan.keep` keeps
(and, for async saves, stages) those, :meth:`BlobPlan.write` writes them to this rank's
blob file, and :meth:`BlobPlan.fill` puts every rank's records into the tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hyperstate import _fs, _gc
from hyperstate.distributed.dtensor import plan_dtensor
from hyperstate.errors import HyperstateError, ValuePath, format_path
from hyperstate.ron import Struct
from hyperstate.tensors import codec
from hyperstate.tensors.context import sending_tensors
from hyperstate.tensors.safetensors import CHECKSUMS, BlobRef, BlobWriter
from hyperstate.tensors.staging import Staging

__all__ = ["BlobPlan", "Planned", "assign"]


@dataclass
class Planned:
    """A tensor or array met while encoding a state for a planned save.

    ``placement`` is ``"replicated"`` (the same on every rank: written once, by the rank
    the plan assigns), ``"sharded"`` (a ``DTensor``'s local shard: written by the rank
    that owns it, at global offset ``at``, and listed in the record), ``"grid"`` (the
    same, in a layout that a ``Grid`` record states whole: the record is complete when
    planned, and nobody reports the shard) or ``"rank"`` (inside a ``PerRank`` value:
    written by this rank). Tensors that share storage have the same ``group``.
    """

    node: Struct
    value: Any
    where: ValuePath
    placement: str
    nbytes: int
    group: int
    at: tuple[int, ...] = ()
    writes: bool = True  # sharded: whether this rank is the one that writes the shard

    def signature(self) -> str:
        """What must be the same on every rank for the plan to be valid."""
        shape = self.node.fields.get("shape", ())
        dtype = self.node.fields.get("dtype", "")
        text = f"{key_hint(self.where)}:{self.placement}:{dtype}:{shape}:{self.group}"
        if self.placement == "grid":  # the ranks must agree on the rule too
            text += f":{self.node.fields['shards']!r}"
        return text


def key_hint(where: ValuePath) -> str:
    """The blob entry name of the tensor at ``where`` (made unique by the writer)."""
    return ".".join(str(p) for p in where) or "value"


_RESERVED = frozenset({"__metadata__", CHECKSUMS})  # names a blob writer never gives


def _list_shards(item: Planned) -> None:
    """Record ``item``'s shards one by one after all (its Grid's entry name is taken)."""
    if item.placement == "grid":
        item.placement = "sharded"
        item.node.fields["shards"] = []


def _check_grid_entry(item: Planned, ref: BlobRef) -> None:
    """The entry a grid shard was written to is the one its record names."""
    extent = tuple(int(n) for n in item.value.shape)
    if ref.key != key_hint(item.where) or ref.stride is not None or ref.shape != extent:
        raise HyperstateError(
            f"{format_path(item.where)}: expected its shard written as entry "
            f"{key_hint(item.where)!r} of shape {extent}, found {ref.key!r} of shape "
            f"{ref.shape} (stride {ref.stride}); a bug: please report it"
        )


def assign(items: Sequence[Planned], rank: int, world_size: int) -> list[int]:
    """Indices of the ``items`` that ``rank`` writes.

    Replicated tensors are written once in total: tensors sharing storage form one group,
    and groups go, largest first, to the rank with the fewest bytes so far (ties to the
    lowest rank), so all ranks write about the same amount in parallel. A shard is written
    by the rank that holds it (one per set of replicas); per-rank values by their rank.
    """
    if world_size == 1:  # every replicated group is this rank's: nothing to balance
        return [
            i
            for i, item in enumerate(items)
            if item.placement in ("replicated", "rank") or item.writes
        ]
    sizes: dict[int, int] = {}
    for item in items:
        if item.placement == "replicated":
            sizes[item.group] = max(sizes.get(item.group, 0), item.nbytes)
    loads = [0] * world_size
    owner: dict[int, int] = {}
    for group in sorted(sizes, key=lambda g: (-sizes[g], g)):
        least = min(range(world_size), key=lambda r: (loads[r], r))
        owner[group] = least
        loads[least] += sizes[group]
    owned = []
    for i, item in enumerate(items):
        if item.placement == "replicated":
            if owner[item.group] == rank:
                owned.append(i)
        elif item.placement == "rank" or item.writes:
            owned.append(i)
    return owned


class BlobPlan:
    """The tensors of a state, collected while it is encoded, to be written by their owners.

    It is the tensors' sink during :meth:`encode`; :attr:`items` lists the tensors met,
    in encoding order (the same on every rank). The caller decides which items this rank
    writes (:meth:`keep`), calls :meth:`write`, exchanges the returned records between
    ranks, and (on the rank that writes ``state.ron``) passes them all to :meth:`fill`.
    """

    def __init__(
        self,
        directory: str,
        file: str,
        staging: Staging | None = None,
        *,
        files: str | None = None,
    ) -> None:
        self.directory = directory
        self.file = file
        self.staging = staging
        # The pattern of every rank's blob file (``file`` is this rank's): with it, a
        # DTensor laid out by a rule is one Grid record, otherwise its shards are listed.
        self.files = files
        self.items: list[Planned] = []
        self.file_size = 0
        self.file_checksum = ""
        self.local = 0  # > 0 while encoding a PerRank value: its tensors are this rank's
        self._per_rank: list[Struct] = []
        self._storages: dict[tuple[Any, ...], int] = {}
        self._written: list[int] = []
        self._hints: dict[str, int] = {}  # entry name -> the first item that has it
        self._meshes: dict[int, tuple[Any, bool]] = {}  # for plan_dtensor
        self._versions: dict[int, int] = {}  # kept, to stage later: version counters

    def encode(self, encode: Callable[[], Any]) -> Any:
        """Run ``encode()`` (e.g. ``to_value(state)``) with this plan as the tensors' sink."""
        with sending_tensors(self):
            return encode()

    # -- the sink ------------------------------------------------------------------------

    def add(self, obj: Any, where: ValuePath, kind: str) -> Struct:
        """Collect a tensor or array; return its record, filled in by :meth:`fill`."""
        index = len(self.items)
        name = "Tensor" if kind == "torch" else "Array"
        placement = "rank" if self.local else "replicated"
        if kind == "numpy":
            return self._append(Planned(Struct(name, {}), obj, where, placement, obj.nbytes, index))
        if type(obj).__name__ == "DTensor":
            hint = key_hint(where)
            # A Grid names one entry in every rank's file: its name must be the one the
            # writer gives it in each (free: no other tensor of the state has it).
            free = hint.isprintable() and hint not in _RESERVED and hint not in self._hints
            part = plan_dtensor(
                obj,
                where,
                placement,
                key=hint if free else None,
                files=self.files,
                meshes=self._meshes,
            )
            nbytes = int(part.local.numel() * part.local.element_size())
            return self._append(
                Planned(
                    part.node,
                    part.local,
                    where,
                    part.placement,
                    nbytes,
                    index,
                    part.at,
                    part.writes,
                )
            )
        storage = obj.untyped_storage()
        key = (storage.data_ptr(), storage.device, storage.nbytes())
        group = self._storages.setdefault(key, index) if storage.nbytes() else index
        nbytes = int(obj.numel() * obj.element_size())
        return self._append(Planned(Struct(name, {}), obj, where, placement, nbytes, group))

    def _append(self, item: Planned) -> Struct:
        first = self._hints.setdefault(key_hint(item.where), len(self.items))
        if first != len(self.items):
            _list_shards(self.items[first])  # its Grid would name an entry taken
        self.items.append(item)
        return item.node

    def add_per_rank(self, node: Struct) -> None:
        """Remember a ``PerRank`` record, whose other ranks' values rank 0 fills in."""
        self._per_rank.append(node)

    # -- the plan ------------------------------------------------------------------------

    @property
    def overflow(self) -> bool:
        """Whether some kept tensors were left unstaged (over the staging budget)."""
        return self.staging is not None and self.staging.overflow

    def signature(self) -> str:
        """A digest of the plan's structure: equal on every rank, or the plan is invalid."""
        text = "\n".join(i.signature() for i in self.items)
        return f"{len(self.items)}:{_fs.checksum(text.encode('utf-8'))}"

    def keep(self, owned: Sequence[int], *, stage: bool = True) -> None:
        """Keep (and stage, for async saves) the items this rank writes; drop the rest.

        With ``stage=False`` the kept tensors are only noted, with their version
        counters: :meth:`stage` copies them later (in a background thread).
        """
        staging = self.staging
        if staging is not None:
            staging.begin()
        mine = set(owned)
        for i, item in enumerate(self.items):
            if i not in mine:
                item.value = None  # training may change it: this rank does not write it
            elif staging is not None and (stage or not hasattr(item.value, "_version")):
                item.value = staging.stage(item.value)  # arrays have no version: copy now
            elif staging is not None:
                self._versions[i] = item.value._version
        self._written = sorted(mine)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the items this rank writes."""
        return sum(self.items[i].nbytes for i in self._written)

    def stage(self) -> None:
        """Copy the tensors that :meth:`keep` noted (``stage=False``) into staging buffers
        (nothing to do after ``keep(..., stage=True)``).

        Raises:
            HyperstateError: a tensor changed while it was copied (its version counter
                moved): the copy may mix two steps, so the save must not commit it.
        """
        staging, versions, self._versions = self.staging, self._versions, {}
        if staging is None or not versions:
            return  # staged by keep(), or nothing to stage
        originals = {i: self.items[i].value for i in versions}
        for i in versions:
            self.items[i].value = staging.stage(originals[i])
        changed = [i for i, version in versions.items() if originals[i]._version != version]
        if changed:
            where = format_path(self.items[changed[0]].where)
            raise HyperstateError(
                f"expected the state's tensors to stay unchanged while a background save "
                f"copies them, found {len(changed)} changed in place (first: {where}); "
                "change tensors outside an optimizer step or a module forward only after "
                "wait_staged() (or do not stage in the background)"
            )

    def write(self) -> dict[int, Struct]:
        """Write this rank's blob file; return the records of what it wrote.

        The records give, for each written item (by index), the fields of its record (for
        a shard: its ``Shard(...)`` record). They are in this rank's tree already;
        :meth:`fill` puts other ranks' records into it.
        """
        records: dict[int, Struct] = {}
        with _gc.paused():
            self._write(records)
        self.fill([records])
        return records

    def _write(self, records: dict[int, Struct]) -> None:
        if self._written:
            # Grid shards first, each an entry of its own: the writer gives each its name
            # before any other tensor could take it. Their checksums go in the file.
            grid = [i for i in self._written if self.items[i].placement == "grid"]
            rest = [i for i in self._written if self.items[i].placement != "grid"]
            writer = BlobWriter(self.directory, self.file, checksums=bool(grid))
            added = [
                (i, writer.add(key_hint(self.items[i].where), self.items[i].value, exact=True))
                for i in grid
            ]
            added += [
                (i, writer.add(key_hint(self.items[i].where), self.items[i].value)) for i in rest
            ]
            # Refs come back in the order of add(); keys are not unique (a tensor and a
            # view of it share their storage's entry).
            for (i, _), ref in zip(added, writer.write(), strict=True):
                item = self.items[i]
                if item.placement == "grid":
                    _check_grid_entry(item, ref)
                    item.value = None
                    continue
                fields = codec.record_fields(ref)
                if item.placement == "sharded":
                    records[i] = Struct("Shard", {"at": item.at, **fields})
                else:
                    records[i] = Struct(item.node.name, fields)
                item.value = None
            self.file_size = int(writer.written_bytes)
            self.file_checksum = str(writer.file_checksum)
            if self.staging is not None:
                self.staging.release()

    def fill(self, records: list[dict[int, Struct]]) -> None:
        """Put written entries' records into the tree (records of one or more ranks)."""
        for rank_records in records:
            for i, record in rank_records.items():
                node = self.items[i].node
                if record.name == "Shard":
                    shards = node.fields["shards"]
                    if all(s.fields["at"] != record.fields["at"] for s in shards):
                        shards.append(record)
                        shards.sort(key=lambda s: tuple(s.fields["at"]))
                else:
                    node.fields.update(record.fields)

    def per_rank_values(self) -> list[Any]:
        """This rank's values of the ``PerRank`` fields (after :meth:`write`)."""
        return [node.fields["ranks"][0] for node in self._per_rank]

    def set_per_rank(self, values: list[list[Any]]) -> None:
        """Give the ``PerRank`` fields every rank's value (``values[r]`` from rank ``r``)."""
        for j, node in enumerate(self._per_rank):
            node.fields["ranks"] = [v[j] for v in values]
