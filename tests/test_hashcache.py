"""A bundle's sha256 is remembered by the file's identity, and only while that identity holds."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from edgekit import hashcache
from edgekit.bundle import manifest_bytes, read_bundle, write_tar
from edgekit.hashcache import CACHE_FILE, cached_sha256


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(folder))
    return folder / CACHE_FILE


class Counting:
    def __init__(self, path):
        self.path, self.calls = path, 0

    def __call__(self) -> str:
        self.calls += 1
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def test_a_settled_file_is_hashed_once(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(hashcache, "SETTLED_S", 0.0)
    f = tmp_path / "b.edgekit"
    f.write_bytes(b"x" * 1000)
    compute = Counting(f)
    first = cached_sha256(f, compute)
    assert cached_sha256(f, compute) == first == hashlib.sha256(b"x" * 1000).hexdigest()
    assert compute.calls == 1
    assert str(f.resolve()) in json.loads(cache.read_text())


def test_a_file_replaced_or_rewritten_is_hashed_again(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(hashcache, "SETTLED_S", 0.0)
    f = tmp_path / "b.edgekit"
    f.write_bytes(b"a" * 1000)
    compute = Counting(f)
    cached_sha256(f, compute)
    new = tmp_path / "new"
    new.write_bytes(b"b" * 1000)  # the same size, a new file renamed over it (as package writes)
    os.replace(new, f)
    assert cached_sha256(f, compute) == hashlib.sha256(b"b" * 1000).hexdigest()
    before = os.stat(f)
    time.sleep(0.05)  # past the file system clock's tick (SETTLED_S covers writes within one)
    with open(f, "r+b") as fh:  # written in place, its modification time put back: the change time moves
        fh.write(b"c")
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cached_sha256(f, compute) == hashlib.sha256(b"c" + b"b" * 999).hexdigest()
    assert compute.calls == 3


def test_a_file_just_written_is_not_remembered(tmp_path, cache):
    """A second write within the file system clock's tick would keep its stat: git's racy case."""
    f = tmp_path / "b.edgekit"
    f.write_bytes(b"x" * 1000)
    compute = Counting(f)
    cached_sha256(f, compute)
    cached_sha256(f, compute)
    assert compute.calls == 2 and not cache.exists()


def test_a_broken_or_unwritable_cache_costs_only_the_hash(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(hashcache, "SETTLED_S", 0.0)
    f = tmp_path / "b.edgekit"
    f.write_bytes(b"x" * 10)
    cache.parent.mkdir()
    cache.write_text("{not json")
    compute = Counting(f)
    assert cached_sha256(f, compute) == hashlib.sha256(b"x" * 10).hexdigest()
    assert cached_sha256(f, compute) and compute.calls == 1  # the broken file was replaced
    monkeypatch.setenv("EDGEKIT_CACHE", str(f))  # a file where the folder should be
    assert cached_sha256(f, compute) == hashlib.sha256(b"x" * 10).hexdigest()


def test_the_newest_entries_are_kept(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(hashcache, "SETTLED_S", 0.0)
    monkeypatch.setattr(hashcache, "KEPT", 3)
    files = []
    for i in range(5):
        f = tmp_path / f"b{i}"
        f.write_bytes(bytes([i]))
        cached_sha256(f, Counting(f))
        files.append(str(f.resolve()))
    assert sorted(json.loads(cache.read_text())) == sorted(files[2:])


def test_read_bundle_takes_the_remembered_hash(tmp_path, cache, monkeypatch):
    """The hash a bundle is read with is the file's, whether computed or remembered."""
    monkeypatch.setattr(hashcache, "SETTLED_S", 0.0)
    manifest = {"schema": 1, "name": "m", "version": "1", "target": {"name": "t"}, "files": {}}
    bundle = tmp_path / "m-1-t.edgekit"
    write_tar(bundle, {"manifest.json": manifest_bytes(manifest), "model.onnx": b"w" * 4096}, 0)
    want = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert read_bundle(bundle).sha256 == want
    assert json.loads(cache.read_text())[str(bundle.resolve())]["sha256"] == want
    assert read_bundle(bundle).sha256 == want
