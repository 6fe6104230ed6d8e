"""Everything about tensor bytes: blob files, the records that point into them, and the
node kinds of training state.

- :mod:`~hyperstate.tensors.dtypes`: the one dtype table, and device fallback.
- :mod:`~hyperstate.tensors.safetensors`: the blob file writer and checked lazy reader.
- :mod:`~hyperstate.tensors.codec`: ``state.ron`` records <-> blob entries.
- :mod:`~hyperstate.tensors.context`: where tensors go while encoding, come from while
  decoding.
- :mod:`~hyperstate.tensors.nodes`: ``Serializable``, stateful objects, ``Blob[T]``,
  :class:`Lazy`, and :data:`EXTENSION`, which teaches the schema tree these kinds.
- :mod:`~hyperstate.tensors.staging`: host buffers for async saves.
"""

from hyperstate.errors import BlobError, StateError
from hyperstate.tensors.nodes import EXTENSION, Blob, Lazy, Serializable
from hyperstate.tensors.safetensors import BlobReader, BlobRef, BlobWriter, checksum

__all__ = [
    "EXTENSION",
    "Blob",
    "BlobError",
    "BlobReader",
    "BlobRef",
    "BlobWriter",
    "Lazy",
    "Serializable",
    "StateError",
    "checksum",
]
