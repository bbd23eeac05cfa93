"""mmai.io: atomic writes (temporary file beside the target, fsync, os.replace, fsync of the folder)."""

from __future__ import annotations

import errno
import os
import stat
import tarfile

import pytest

from mmai import io as mmai_io
from mmai.io import atomic_open, atomic_write, atomic_write_bytes, atomic_write_text, fsync_dir


@pytest.fixture
def fsyncs(monkeypatch):
    """Record every os.fsync as ``("dir" | "file", inode)``, then really fsync."""
    calls: list[tuple[str, int]] = []
    real = os.fsync

    def record(fd):
        info = os.fstat(fd)
        calls.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return calls


def test_a_write_replaces_the_target_after_fsyncing_the_file_then_the_folder(tmp_path, fsyncs):
    target = tmp_path / "state.json"
    target.write_text("old")
    assert atomic_write_text(target, '{"new": 1}\n') == target
    assert target.read_text() == '{"new": 1}\n'
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left
    assert fsyncs == [("file", target.stat().st_ino), ("dir", tmp_path.stat().st_ino)]  # data first, then the rename


def test_a_failing_writer_leaves_the_old_content_and_no_temporary_file(tmp_path, fsyncs):
    target = tmp_path / "index.npz"
    target.write_bytes(b"old content")

    def half_then_fail(file):
        file.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["index.npz"]
    assert not any(kind == "dir" for kind, _ in fsyncs)  # nothing was renamed

    with pytest.raises(KeyboardInterrupt):  # an interrupt as well
        atomic_write(target, lambda file: (file.write(b"x"), (_ for _ in ()).throw(KeyboardInterrupt())))
    assert target.read_bytes() == b"old content" and os.listdir(tmp_path) == ["index.npz"]


def test_a_failed_first_write_leaves_no_file_at_all(tmp_path):
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.bin", lambda file: (_ for _ in ()).throw(ValueError("bad")))
    assert os.listdir(tmp_path) == []


def test_atomic_open_keeps_the_old_file_until_the_block_ends(tmp_path, fsyncs):
    """A tar written member by member (the shard writer) appears whole, or not at all."""
    target = tmp_path / "train-00000.tar"
    target.write_bytes(b"previous shard")
    payload = tmp_path / "member.txt"
    payload.write_text("hello")
    with atomic_open(target) as file:
        with tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar.add(payload, arcname="000001.txt")
            assert target.read_bytes() == b"previous shard"
            temps = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
            assert len(temps) == 1 and temps[0].startswith(".train-00000.tar.")  # hidden, beside the target
    with tarfile.open(target) as tar:
        assert tar.extractfile("000001.txt").read() == b"hello"
    assert sorted(os.listdir(tmp_path)) == ["member.txt", "train-00000.tar"]
    assert fsyncs[-1] == ("dir", tmp_path.stat().st_ino)


def test_a_dotfile_temporary_name_keeps_the_targets_name_as_its_prefix(tmp_path):
    """`.verify-cache.json`'s temporary file starts with `.verify-cache.json` (the shard folder's check knows it)."""
    assert mmai_io.temp_path(tmp_path / ".verify-cache.json").name.startswith(".verify-cache.json.")


def test_the_new_file_has_the_mode_of_a_newly_created_file(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "results.csv", b"a,b\n")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "results.csv").stat().st_mode) == 0o644  # not mkstemp's 0o600


def test_fsync_false_replaces_atomically_without_fsync(tmp_path, fsyncs):
    atomic_write_bytes(tmp_path / "cache.json", b"{}", fsync=False)
    assert (tmp_path / "cache.json").read_bytes() == b"{}" and fsyncs == []


def test_the_folder_fsync_is_skipped_where_the_os_or_file_system_has_none(tmp_path, monkeypatch, fsyncs):
    monkeypatch.setattr(mmai_io, "FOLDER_FSYNC", False)  # e.g. Windows: no folder fsync
    atomic_write_bytes(tmp_path / "a.bin", b"1")
    assert [kind for kind, _ in fsyncs] == ["file"] and (tmp_path / "a.bin").read_bytes() == b"1"
    monkeypatch.setattr(mmai_io, "FOLDER_FSYNC", True)

    real = os.fsync

    def no_folder_fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")  # a file system without folder fsync
        return real(fd)

    monkeypatch.setattr(os, "fsync", no_folder_fsync)
    atomic_write_bytes(tmp_path / "b.bin", b"2")
    assert (tmp_path / "b.bin").read_bytes() == b"2"
    assert fsync_dir(tmp_path) is False


def test_a_folder_fsync_io_error_is_raised(tmp_path, monkeypatch):
    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output"):
        fsync_dir(tmp_path)
