"""The services file: one CP id per line, blank lines and # comments ignored."""

from __future__ import annotations

import pytest

from ev_driver.services_file import (
    ServicesFileError,
    parse_services,
    read_services_file,
)


@pytest.mark.parametrize("text,expected", [
    ("CP1\nCP2\nCP3\n", ["CP1", "CP2", "CP3"]),
    ("CP1", ["CP1"]),  # no final newline
    ("\n\nCP1\n\n\nCP2\n\n", ["CP1", "CP2"]),  # blank lines
    ("# my services\nCP1\n  # indented comment\nCP2\n", ["CP1", "CP2"]),  # comment lines
    ("CP1   # at the door\nCP2#no space\n", ["CP1", "CP2"]),  # comments after an id
    ("  CP1  \n\tCP2\t\n", ["CP1", "CP2"]),  # surrounding whitespace
    ("CP1\r\nCP2\r\n", ["CP1", "CP2"]),  # Windows line ends
    ("CP1\nCP1\nCP1\n", ["CP1", "CP1", "CP1"]),  # repeats are kept: a driver may charge twice there
    ("cp_1\nCP-2\n" + "X" * 64 + "\n", ["cp_1", "CP-2", "X" * 64]),
    ("   \n \t \nCP9\n", ["CP9"]),  # whitespace-only lines
])
def test_valid_files(text, expected):
    assert parse_services(text) == expected


@pytest.mark.parametrize("text,line,bad", [
    ("CP1\nCP 2\n", 2, "CP 2"),  # two words on one line
    ("CP1\nCP2,CP3\n", 2, "CP2,CP3"),
    ("CP1\n\nCP/3\n", 3, "CP/3"),
    ("CPé\n", 1, "CPé"),
    ("X" * 65 + "\n", 1, "X" * 65),
])
def test_invalid_ids_are_reported_with_their_line(text, line, bad):
    with pytest.raises(ServicesFileError) as info:
        parse_services(text, source="services.txt")
    assert f"services.txt, line {line}: {bad!r} is not a CP id" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n# comments\n", "   \n"])
def test_no_entries_is_an_error(text):
    with pytest.raises(ServicesFileError, match="lists no CP"):
        parse_services(text)


def test_read_file_with_byte_order_mark(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("\ufeffCP1\nCP2\n".encode("utf-8"))
    assert read_services_file(path) == ["CP1", "CP2"]


def test_unreadable_files(tmp_path):
    with pytest.raises(ServicesFileError, match="cannot read the services file"):
        read_services_file(tmp_path / "missing.txt")
    with pytest.raises(ServicesFileError, match="cannot read the services file"):
        read_services_file(tmp_path)  # a folder
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\xff\xfe\x00CP1")
    with pytest.raises(ServicesFileError, match="not UTF-8"):
        read_services_file(binary)
