"""ev_common.files: a file written whole, with its mode from the start."""

from __future__ import annotations

import pytest

from ev_common.files import write_atomically


def test_written_with_its_mode_and_replaced(tmp_path):
    path = tmp_path / "key"
    write_atomically(path, b"one", 0o600)
    write_atomically(path, b"two", 0o600)
    assert path.read_bytes() == b"two" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary file left


def test_without_replace_an_existing_file_is_left_alone(tmp_path):
    path = tmp_path / "credential"
    write_atomically(path, b"first", 0o600, replace=False)
    with pytest.raises(FileExistsError):
        write_atomically(path, b"second", 0o600, replace=False)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["credential"]
