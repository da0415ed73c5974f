"""The content store: blobs kept as fixed-size chunks with a bitfield and per-chunk sha256."""

from p2pull.store.types import BlobStore, ByteSink, StoredBlob, chunk_count

__all__ = ["BlobStore", "ByteSink", "StoredBlob", "chunk_count"]
