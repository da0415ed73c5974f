"""The on-disk content store.

Layout under ``data_dir``::

    blobs/sha256/<hex>/data   the blob's bytes at their offsets (preallocated; sparse while partial)
    blobs/sha256/<hex>/meta   msgpack: size, chunk size, bitfield, chunk hashes, complete flag

The metadata is replaced atomically (temp file, fsync, rename) and only after the data file has
been fdatasync'ed, so after a crash every chunk it lists is on disk; chunks written since the last
checkpoint are simply fetched again. What a restart loads is not trusted: each chunk is checked
against its recorded sha256 the first time it is read back (to be served, uploaded, or folded into
the whole-blob hash); one that does not match (disk rot, a torn write) is dropped, the blob is no
longer complete, and the chunk is fetched again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import msgpack
import trio

from p2pull.bitfield import Bitfield
from p2pull.errors import StoreError, StoreFull
from p2pull.reference import SHA256_RE, Digest
from p2pull.store.base import BlobBase, StoreBase
from p2pull.store.types import ByteSink, chunk_count

log = logging.getLogger(__name__)

META_VERSION = 1


class DiskBlob(BlobBase):
    def __init__(self, directory: Path, digest: Digest, **kwargs: Any) -> None:
        super().__init__(digest, **kwargs)
        self.directory = directory
        self._fd: int | None = None
        self._persist_lock = trio.Lock()

    @property
    def data_path(self) -> Path:
        return self.directory / "data"

    def _writable_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._fd

    def _pwrite(self, offset: int, data: bytes) -> None:
        fd = self._writable_fd()
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def _pread(self, offset: int, length: int) -> bytes:
        fd = os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def _meta(self) -> dict[str, Any]:
        return {
            "v": META_VERSION,
            "digest": str(self.digest),
            "size": self.size,
            "chunk_size": self.chunk_size,
            "media_type": self.media_type,
            "complete": self._complete,
            "have": self._have.to_bytes(),
            "hashes": [h or b"" for h in self._hashes],
        }

    def _write_meta(self, meta: dict[str, Any]) -> None:
        if self._fd is not None:
            os.fdatasync(self._fd)
            if meta["complete"]:
                os.close(self._fd)
                self._fd = None
        tmp = self.directory / "meta.tmp"
        with open(tmp, "wb") as handle:
            handle.write(msgpack.packb(meta))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.directory / "meta")

    async def _persist(self) -> None:
        # One writer of the metadata at a time: two concurrent checkpoints (two clients putting
        # the same manifest, say) would race on meta.tmp and on closing the data file.
        async with self._persist_lock:
            if self._discarded:
                return
            self.dirty = 0
            try:
                await trio.to_thread.run_sync(self._write_meta, self._meta())
            except OSError as exc:
                raise StoreError(f"persisting metadata of {self.digest}: {exc}") from exc

    async def _drop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        await trio.to_thread.run_sync(shutil.rmtree, self.directory, True)

    async def _send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        try:
            fd = os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"opening {self.digest}: {exc}") from exc
        try:
            await sink.sendfile(fd, offset=offset, count=length)
        finally:
            os.close(fd)


class DiskStore(StoreBase):
    """Create with :meth:`load`, which picks up complete and partial blobs from an earlier run."""

    def __init__(self, data_dir: Path, *, chunk_size: int, quota_bytes: int = 0) -> None:
        super().__init__(chunk_size=chunk_size, quota_bytes=quota_bytes)
        self.data_dir = data_dir
        self.blob_root = data_dir / "blobs" / "sha256"
        self.free_bytes = lambda: shutil.disk_usage(self.data_dir).free

    @classmethod
    async def load(cls, data_dir: Path, *, chunk_size: int, quota_bytes: int = 0) -> DiskStore:
        store = cls(data_dir, chunk_size=chunk_size, quota_bytes=quota_bytes)
        try:
            await trio.to_thread.run_sync(store._scan)
        except OSError as exc:
            raise StoreError(f"cannot use data dir {data_dir}: {exc}") from exc
        return store

    def _scan(self) -> None:
        self.blob_root.mkdir(parents=True, exist_ok=True)
        for entry in self.blob_root.iterdir():
            if SHA256_RE.fullmatch(f"sha256:{entry.name}") is None:
                log.warning("ignoring unexpected entry %s in the store", entry)
                continue
            try:
                blob = self._load_blob(entry, Digest(entry.name))
            except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                log.warning("discarding unreadable blob directory %s: %s", entry, exc)
                shutil.rmtree(entry, ignore_errors=True)
                continue
            self._adopt(blob)
            self._last_used[blob.digest] = (entry / "meta").stat().st_mtime

    def _load_blob(self, directory: Path, digest: Digest) -> DiskBlob:
        meta = msgpack.unpackb((directory / "meta").read_bytes())
        if meta["v"] != META_VERSION or meta["digest"] != str(digest):
            raise ValueError(f"metadata does not describe {digest}")
        size, chunk_size = meta["size"], meta["chunk_size"]
        if not isinstance(size, int) or not isinstance(chunk_size, int):
            raise ValueError("sizes in metadata are not integers")
        if chunk_size <= 0 or size < 0:
            raise ValueError("inconsistent sizes in metadata")
        count = chunk_count(size, chunk_size)
        if len(meta["hashes"]) != count:
            raise ValueError("inconsistent sizes in metadata")
        have = Bitfield(count, bytes(meta["have"]))
        hashes: list[bytes | None] = [bytes(h) or None for h in meta["hashes"]]
        if any((h is None) == have.has(i) for i, h in enumerate(hashes)):
            raise ValueError("bitfield and hash list disagree")
        complete = bool(meta["complete"])
        if complete and not have.complete:
            raise ValueError("marked complete with chunks missing")
        if (directory / "data").stat().st_size != size:
            raise ValueError("data file has the wrong size")
        return DiskBlob(
            directory,
            digest,
            size=size,
            chunk_size=chunk_size,
            media_type=meta["media_type"],
            have=have,
            hashes=hashes,
            complete=complete,
        )

    async def _create(
        self, digest: Digest, *, size: int, media_type: str | None, chunk_size: int
    ) -> BlobBase:
        directory = self.blob_root / digest.hex
        blob = DiskBlob(directory, digest, size=size, chunk_size=chunk_size, media_type=media_type)
        try:
            await trio.to_thread.run_sync(_allocate, directory, size)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"no disk space for {digest} ({size} bytes): {exc}") from exc
            raise StoreError(f"creating {digest}: {exc}") from exc
        await blob._persist()
        return blob

    def touch(self, digest: Digest) -> None:
        super().touch(digest)
        blob = self._blobs.get(digest)
        if isinstance(blob, DiskBlob):
            with contextlib.suppress(OSError):
                os.utime(blob.directory / "meta")


def _allocate(directory: Path, size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "data", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size)
    finally:
        os.close(fd)
