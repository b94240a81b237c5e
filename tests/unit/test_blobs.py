"""The blob store: content-addressed, written whole or not at all, and readable in both layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailticket.errors import DiskUnavailable
from mailticket.storage.blobs import BlobStore


def test_put_names_by_sha256_and_stores_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert store.path(digest) == tmp_path / digest[:2] / digest
    assert store.put(b"hello") == digest
    assert store.get(digest) == b"hello"
    assert [p.name for p in (tmp_path / digest[:2]).iterdir()] == [digest]  # no temp file left


def test_blobs_of_the_two_level_layout_are_still_read(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"old mail").hexdigest()
    legacy = tmp_path / digest[:2] / digest[2:4] / digest
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"old mail")
    store = BlobStore(tmp_path)
    assert store.get(digest) == b"old mail"
    assert store.put(b"old mail") == digest  # found: not written a second time
    assert not (tmp_path / digest[:2] / digest).exists()


def test_a_folder_removed_behind_the_store_is_made_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    first = store.put(b"a")
    (tmp_path / first[:2] / first).unlink()
    (tmp_path / first[:2]).rmdir()
    assert store.put(b"a") == first
    assert store.get(first) == b"a"


def test_a_write_the_file_system_refuses_is_a_disk_fault_naming_the_path(tmp_path: Path) -> None:
    """Not the message's fault: the blob store says so with a typed error (intake then pauses)."""
    blocked = tmp_path / "blobs"
    blocked.write_bytes(b"a file where the folder should be")  # every mkdir under it fails
    store = BlobStore(blocked)
    with pytest.raises(DiskUnavailable) as caught:
        store.put(b"mail")
    _digest, written = store.put_async(b"other mail")
    with pytest.raises(DiskUnavailable):
        written.result()
    assert str(blocked) in str(caught.value) and caught.value.errno is not None
