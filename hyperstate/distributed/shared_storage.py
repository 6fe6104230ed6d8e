"""Whether every rank sees the checkpoint directory: one probe when a manager opens.

Every rank writes its own blob files straight into the checkpoint directory and rank 0
commits what they all wrote, so the directory must be one shared place: a shared
filesystem (NFS, Lustre, ...) or an object store (``s3://``, ``gs://``). On node-local
disks at the same path, or with different paths on different ranks, each node would hold
a part of every checkpoint and none could be committed ("recorded file is missing", after
every blob was written). :func:`check_shared_storage` finds that out before anything is
written: rank 0 writes a probe file whose name and content are a token drawn for this
check (:func:`hyperstate.storage.probe_file`), every rank reads it back, and rank 0
removes it. A leftover probe of another job cannot pass for this one: its token differs.

>>> from hyperstate.distributed.collectives import Ranks
>>> check_shared_storage(Ranks(), "memory://run")  # one rank: nothing to check, no write
"""

from __future__ import annotations

import logging
import posixpath
import secrets
import socket

from hyperstate import _fs
from hyperstate.distributed.collectives import Ranks
from hyperstate.errors import StorageError
from hyperstate.storage import probe_file

__all__ = ["check_shared_storage"]

log = logging.getLogger("hyperstate")

_SEEN = "seen"


def check_shared_storage(ranks: Ranks, url: str) -> None:
    """Check that every rank sees the directory ``url`` that rank 0 writes to.

    Collective: every rank calls it, with the same ``url``. With one rank it does
    nothing. Leaves nothing behind but, on a fresh run, the directory itself (rank 0
    creates it, as its first save would).

    Raises:
        StorageError: on every rank, when some rank did not find the probe (naming those
            ranks and their hosts), or rank 0 could not write it.
        DistributedError: a rank died or did not arrive within the collective timeout.
    """
    if not ranks.distributed:
        return
    fs, root = _fs.url_to_fs(url)
    context = f"checkpoint directory {url}"

    def write() -> bytes:
        token = secrets.token_hex(8)
        name = probe_file(token)
        try:
            fs.makedirs(root, exist_ok=True)
            fs.pipe_file(posixpath.join(root, name), token.encode())
        except OSError as e:
            raise StorageError("write", f"{url}/{name}", str(e)) from e
        return f"{token}\n{socket.gethostname()}".encode()

    sent = ranks.run_on_coordinator("write probe", write, context=context).decode()
    token, writer = sent.split("\n", 1)
    name = probe_file(token)
    path = posixpath.join(root, name)

    def look() -> bytes:
        try:
            found = fs.cat_file(path)
        except FileNotFoundError:
            problem = "not found"
        except OSError as e:  # permission denied, an unreachable mount, ...
            problem = f"{type(e).__name__}: {e}"
        else:
            problem = _SEEN if found == token.encode() else f"found other bytes: {found[:40]!r}"
        return f"{socket.gethostname()}\n{problem}".encode()

    # The gather is also the barrier after which rank 0 may remove the probe.
    looked = [r.decode().split("\n", 1) for r in ranks.run("look for probe", look, context=context)]
    if ranks.is_coordinator:
        try:
            fs.rm_file(path)
        except OSError as e:  # harmless: discovery ignores it, and no later check reads it
            log.warning("could not remove the probe %s/%s: %s", url, name, e)
    missing = {
        rank: (host, problem) for rank, (host, problem) in enumerate(looked) if problem != _SEEN
    }
    if missing:
        which = "; ".join(
            f"rank {r} on {host}: {problem}" for r, (host, problem) in missing.items()
        )
        raise StorageError(
            "check shared storage",
            url,
            f"the checkpoint directory must be shared storage visible to every rank (a "
            f"shared filesystem, or an object store such as s3://), but rank(s) "
            f"{', '.join(map(str, missing))} could not see the file {name} that rank 0 "
            f"on {writer} wrote there ({which}); on node-local disks, or with another "
            f"path on each rank, no checkpoint could be committed",
        )
