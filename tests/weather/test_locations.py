"""EV_W's locations file: its lines, what is skipped, re-reading when it changes, and the menu's
add and remove, which edit it in place (a restart keeps them)."""

from __future__ import annotations

import os
import threading

import pytest

from ev_weather.locations import MAX_CITIES, LocationsFile, city_of, parse, parse_line


@pytest.mark.parametrize("text, city", [
    ("Alicante,ES", "Alicante,ES"),
    ("  san vicente   del raspeig , es ", "san vicente del raspeig,ES"),
    ("A Coruña,es", "A Coruña,ES"),
])
def test_a_city_is_city_comma_country(text, city):
    assert city_of(text) == city


@pytest.mark.parametrize("text", ["Alicante", "Alicante,", ",ES", "Alicante,ESP", "Alicante,E1", "Ali,cante,ES",
                                  "x" * 98 + ",ES", "Ali\tcante\x00,ES"])
def test_what_is_not_a_city(text):
    with pytest.raises(ValueError):
        city_of(text)


def test_lines_comments_and_problems():
    found = parse("# CPs by city\n\nCP001 Alicante,ES\nCP002 Alicante,ES   # the second\nCP003 Madrid,ES\n"
                  "CP/4 Madrid,ES\nCP005\nCP006 Madrid\nCP001 Madrid,ES\nCP007 ALICANTE,es\n" + "x" * 600 + "\n")
    assert found.cities == {"Alicante,ES": ("CP001", "CP002", "CP007"), "Madrid,ES": ("CP003",)}
    assert found.cp_count == 4 and found.city_of("CP003") == "Madrid,ES" and found.city_of("CP9") is None
    assert [p.split(":")[0] for p in found.problems] == ["line 6", "line 7", "line 8", "line 9", "line 11"]
    assert "CP001 is listed at line 3 already (at Alicante,ES)" in found.problems[3]
    assert parse_line("   # only a comment") is None and parse_line("") is None


def test_at_most_so_many_cities():
    found = parse("".join(f"CP{n} City{n},ES\n" for n in range(MAX_CITIES + 2)))
    assert len(found.cities) == MAX_CITIES and len(found.problems) == 2


def test_read_again_when_it_changes(tmp_path):
    path = tmp_path / "locations.txt"
    locations = LocationsFile(path)
    current, error = locations.reload_if_changed()
    assert current.cities == {} and "does not exist" in error
    assert locations.reload_if_changed() is None  # still missing: nothing new
    path.write_text("CP001 Alicante,ES\n")
    current, error = locations.reload_if_changed()
    assert current.cities == {"Alicante,ES": ("CP001",)} and error is None
    assert locations.reload_if_changed() is None
    os.utime(path, ns=(1, 1))  # the same content, another time: read again
    assert locations.reload_if_changed()[0].cities == {"Alicante,ES": ("CP001",)}
    replaced = tmp_path / "new.txt"  # an editor that writes a new file and renames it
    replaced.write_text("CP002 Elche,ES\n")
    os.replace(replaced, path)
    assert locations.reload_if_changed()[0].cities == {"Elche,ES": ("CP002",)}
    path.unlink()
    current, error = locations.reload_if_changed()
    assert current.cities == {} and error is not None


def test_a_file_too_large_is_not_read(tmp_path):
    path = tmp_path / "locations.txt"
    path.write_text("CP001 Alicante,ES\n")
    locations = LocationsFile(path)
    locations.reload_if_changed()
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    current, error = locations.reload_if_changed()
    assert "larger than" in error and current.cities == {"Alicante,ES": ("CP001",)}  # the last good list kept


def test_add_and_remove_edit_the_file_in_place(tmp_path):
    path = tmp_path / "sub" / "locations.txt"
    locations = LocationsFile(path)
    assert locations.add("CP001 alicante , es") == f"added CP001 at alicante,ES to {path}"
    path.write_text(path.read_text() + "# keep me\nCP002 Alicante,ES")  # no newline at the end
    locations.add("CP003 Madrid,ES")
    assert path.read_text() == "CP001 alicante,ES\n# keep me\nCP002 Alicante,ES\nCP003 Madrid,ES\n"
    with pytest.raises(ValueError, match="CP003 is listed already"):
        locations.add("CP003 Elche,ES")
    for bad in ("CP004", "CP/4 Elche,ES", "CP004 Elche", "", "# nothing"):
        with pytest.raises(ValueError):
            locations.add(bad)
    assert locations.remove("ALICANTE,es") == f"removed CP001, CP002 (ALICANTE,es) from {path}"
    assert path.read_text() == "# keep me\nCP003 Madrid,ES\n"
    assert locations.remove("CP003").startswith("removed CP003 from")
    with pytest.raises(ValueError, match="no location"):
        locations.remove("CP003")
    with pytest.raises(ValueError):
        locations.remove("Madrid")  # not a CP id of the file, not a city
    assert path.read_text() == "# keep me\n"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_the_file_keeps_its_mode(tmp_path):
    path = tmp_path / "locations.txt"
    path.write_text("CP001 Alicante,ES\n")
    path.chmod(0o640)
    LocationsFile(path).add("CP002 Elche,ES")
    assert path.stat().st_mode & 0o777 == 0o640


def test_list(tmp_path):
    path = tmp_path / "locations.txt"
    locations = LocationsFile(path)
    locations.reload_if_changed()
    assert locations.lines() == [f"no locations in {path}: add one with 'CP_ID City,CC'"]
    path.write_text("CP001 Alicante,ES\nCP002 Alicante,ES\nbad line\n")
    locations.reload_if_changed()
    lines = locations.lines()
    assert lines[0] == "Alicante,ES: CP001, CP002"
    assert lines[1].startswith("skipped: line 3: 'line' is not 'City,CC'") and len(lines) == 2


def test_concurrent_adds_each_land_once(tmp_path):
    locations = LocationsFile(tmp_path / "locations.txt")
    threads = [threading.Thread(target=locations.add, args=(f"CP{n:03d} City{n % 5},ES",)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert parse((tmp_path / "locations.txt").read_text()).cp_count == 40
