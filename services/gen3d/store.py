"""The asset store on disk: content-addressed blobs, and one folder of names per finished job.

Layout under the root::

    blobs/<sha256[:2]>/<sha256>      every file once, named by its content
    jobs/<job_id>/<file name>        hard links to the blobs, so an OBJ finds its MTL by name

Every path a caller gives is relative to the root; one that leaves it (``..``, an absolute path, a
symbolic link out) is refused with InvalidArgument.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class StoredFile:
    """A file of a finished job."""

    name: str
    size_bytes: int
    sha256: str
    store_path: str
    """Relative to the store's root."""


class AssetStore:
    """Content-addressed files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        for sub in ("blobs", "jobs", "work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def resolve(self, store_path: str) -> Path:
        """The absolute path of ``store_path``; InvalidArgument if it leaves the store, NotFound if absent."""
        if not store_path or "\x00" in store_path or os.path.isabs(store_path):
            raise InvalidArgument(f"path {store_path!r} must be relative to the asset store")
        path = (self.root / store_path).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidArgument(f"path {store_path!r} is outside the asset store")
        if not path.is_file():
            raise NotFound(f"no file {store_path!r} in the asset store")
        return path

    def _blob(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    def put_bytes(self, data: bytes) -> tuple[str, str]:
        """Store ``data``; returns (store path, sha256). Storing the same bytes again is a no-op."""
        sha = hashlib.sha256(data).hexdigest()
        blob = self._blob(sha)
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=blob.parent, delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, blob)
        return str(blob.relative_to(self.root)), sha

    def put_file(self, path: Path) -> tuple[str, str, int]:
        """Move ``path`` into the blobs; returns (store path, sha256, size)."""
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        blob = self._blob(sha)
        size = path.stat().st_size
        if blob.exists():
            path.unlink()
        else:
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, blob)
        return str(blob.relative_to(self.root)), sha, size

    def work_dir(self, job_id: str) -> Path:
        """A fresh scratch folder for a job's pipeline."""
        path = self.root / "work" / job_id
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def publish(self, job_id: str, work: Path, names: list[str]) -> list[StoredFile]:
        """Move the job's files from ``work`` into the blobs and link them under ``jobs/<job_id>/``."""
        out_dir = self.root / "jobs" / job_id
        out_dir.mkdir(parents=True, exist_ok=True)
        stored = []
        for name in names:
            _, sha, size = self.put_file(work / name)
            link = out_dir / name
            if link.exists():
                link.unlink()
            os.link(self._blob(sha), link)
            stored.append(StoredFile(name, size, sha, str(link.relative_to(self.root))))
        shutil.rmtree(work, ignore_errors=True)
        return stored

    def open_blob(self, sha: str) -> Path:
        """The blob with content ``sha``; NotFound when it was removed."""
        blob = self._blob(sha)
        if not blob.is_file():
            raise NotFound(f"blob {sha} is missing from the asset store")
        return blob
