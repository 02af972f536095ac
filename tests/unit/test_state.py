"""Atomic persistence of the learned state.

Tests run as root, where a chmod'ed directory does not stop writes. Failures are therefore
made real where possible (a state directory under a regular file fails in mkdir with ENOTDIR)
and otherwise injected at the system call that fails on a full or read-only disk: mkstemp's
open (EROFS), fsync (ENOSPC, where delayed write errors surface) and the rename.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from watchdog.state import StateError, StateStore

DATA: dict[str, Any] = {"version": 1, "wires": {"etcd-1": {"watch_streams": {"steady": 412.5}}}}


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def nested(levels: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(levels - 1):
        value = [value]
    return value


def envelope(**changes: Any) -> dict[str, Any]:
    return {"format": "watchdog-state", "version": 1, "saved_at": 1.0, "data": DATA, **changes}


def test_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DATA)
    assert store.load() == DATA
    store.save({"other": [1, 2.5, None]})
    assert store.load() == {"other": [1, 2.5, None]}
    assert names(tmp_path) == ["state.json"]


def test_the_file_holds_the_documented_envelope(tmp_path: Path) -> None:
    with freeze_time("2024-03-01 12:00:00"):
        StateStore(tmp_path, name="wires.json").save(DATA)
    assert json.loads((tmp_path / "wires.json").read_text()) == {
        "format": "watchdog-state",
        "version": 1,
        "saved_at": 1709294400.0,
        "data": DATA,
    }
    assert stat.S_IMODE((tmp_path / "wires.json").stat().st_mode) == 0o600


def test_a_missing_file_loads_as_none(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "nowhere").load() is None
    assert not (tmp_path / "nowhere").exists()  # loading creates nothing


def test_save_creates_the_directory_private(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "var" / "lib" / "watchdog")
    store.save(DATA)
    assert stat.S_IMODE((tmp_path / "var" / "lib" / "watchdog").stat().st_mode) == 0o700
    assert store.load() == DATA


def test_a_crash_before_the_rename_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save({"generation": 1})
    before = (tmp_path / "state.json").read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StateError, match="Input/output error") as caught:
        store.save({"generation": 2})
    monkeypatch.undo()

    assert caught.value.errno == errno.EIO
    assert (tmp_path / "state.json").read_bytes() == before
    assert names(tmp_path) == ["state.json"]
    assert store.load() == {"generation": 1}


def test_a_full_disk_raises_state_error_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save({"generation": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StateError) as caught:
        store.save({"generation": 2})
    monkeypatch.undo()

    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOSPC
    assert str(tmp_path / "state.json") in str(caught.value)
    assert names(tmp_path) == ["state.json"]
    assert store.load() == {"generation": 1}


def test_a_read_only_file_system_raises_state_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(StateError, match="Read-only file system") as caught:
        StateStore(tmp_path).save(DATA)
    assert caught.value.errno == errno.EROFS
    assert names(tmp_path) == []


def test_a_directory_that_cannot_exist_raises_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "regular-file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError) as caught:
        StateStore(blocker / "state").save(DATA)  # real ENOTDIR, even for root
    assert caught.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert names(tmp_path) == ["regular-file"]


def test_data_that_is_not_json_is_refused_before_touching_the_disk(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DATA)
    # StateError like a full disk: the daemon counts it, and a shutdown never crashes on it.
    with pytest.raises(StateError, match=r"not JSON .*Out of range float"):
        store.save({"steady": float("inf")})
    with pytest.raises(StateError, match="not JSON"):
        store.save({"when": object()})
    assert store.load() == DATA
    assert names(tmp_path) == ["state.json"]


def test_temp_files_left_by_a_killed_process_are_removed_on_load(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DATA)
    (tmp_path / ".state.json.k3j2_x.tmp").write_text('{"half": ')
    (tmp_path / ".unrelated.tmp").write_text("kept")
    assert store.load() == DATA
    assert names(tmp_path) == [".unrelated.tmp", "state.json"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"format": "watchdog-state", "version": 1, "data": {', "not JSON"),
        (b"\xff\xfe garbage", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (json.dumps(envelope(format="something-else")).encode(), "format 'something-else'"),
        (json.dumps(envelope(version=2)).encode(), "version 2, expected 1"),
        (json.dumps(envelope(data=[1])).encode(), "no 'data' object"),
        (b'{"format": "watchdog-state", "version": 1, "saved_at": 1, "data": {"x": '
         + b"9" * 400 + b"}}", "an integer of 400 digits"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (json.dumps(envelope(data={"x": nested(33)})).encode(), "nested deeper than 32 levels"),
        (json.dumps(envelope(data={"steady": float("nan")})).encode(), "NaN is not a number"),
        (b'{"format": "watchdog-state", "version": 1, "saved_at": 1, "data": {"x": 1e400}}',
         "1e400 is beyond a double"),
        (json.dumps(envelope(version="1")).encode(), "version '1', expected 1"),
        (json.dumps(envelope(version=True)).encode(), "version True, expected 1"),
        (json.dumps(envelope(saved_at="yesterday")).encode(), "saved_at 'yesterday' is not"),
    ],
    ids=["truncated", "binary", "empty", "list", "foreign-format", "foreign-version", "no-data",
         "400-digits", "100k-deep", "33-deep", "nan", "1e400", "version-string", "version-bool",
         "saved-at-string"],
)
def test_an_unusable_file_is_set_aside_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, problem: str
) -> None:
    (tmp_path / "state.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="watchdog.state"), freeze_time("2024-03-01"):
        assert StateStore(tmp_path).load() is None

    assert names(tmp_path) == ["state.json.corrupt-20240301T000000Z"]
    assert (tmp_path / "state.json.corrupt-20240301T000000Z").read_bytes() == content
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert problem in record.getMessage()
    assert "set aside as" in record.getMessage()


def test_set_aside_files_never_overwrite_each_other(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with freeze_time("2024-03-01"):
        for generation in (1, 2, 3):
            (tmp_path / "state.json").write_text(f"broken {generation}")
            assert store.load() is None
    assert names(tmp_path) == [
        "state.json.corrupt-20240301T000000Z",
        "state.json.corrupt-20240301T000000Z-2",
        "state.json.corrupt-20240301T000000Z-3",
    ]
    assert (tmp_path / "state.json.corrupt-20240301T000000Z-3").read_text() == "broken 3"


def test_after_setting_aside_the_next_save_and_load_work(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "state.json").write_text("{")
    assert store.load() is None
    store.save(DATA)
    assert store.load() == DATA


def test_an_unreadable_path_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="watchdog.state"):
        assert StateStore(tmp_path).load() is None
    assert "cannot read state file" in caplog.text
    assert names(tmp_path) == ["state.json"]


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_the_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        StateStore(tmp_path, name=name)


def test_a_file_larger_than_max_bytes_is_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("watchdog.state.MAX_BYTES", 1024)
    StateStore(tmp_path).save({"blob": "x" * 2000})
    with caplog.at_level(logging.WARNING, logger="watchdog.state"):
        assert StateStore(tmp_path).load() is None
    assert "larger than" in caplog.text and "set aside" in caplog.text


@pytest.mark.parametrize(
    ("verdict", "problem"),
    [(lambda data: "wires: expected an object", "wires: expected an object"),
     (lambda data: data["missing"], "invalid data ('missing')")],
    ids=["returns-a-problem", "raises"],
)
def test_the_validate_hook_sets_aside_data_it_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, verdict: Any, problem: str
) -> None:
    StateStore(tmp_path).save(DATA)
    with caplog.at_level(logging.WARNING, logger="watchdog.state"):
        assert StateStore(tmp_path, validate=verdict).load() is None
    assert problem in caplog.text
    assert [name.split(".corrupt-")[0] for name in names(tmp_path)] == ["state.json"]
    assert not (tmp_path / "state.json").exists()


def test_the_validate_hook_passes_good_data(tmp_path: Path) -> None:
    StateStore(tmp_path).save(DATA)
    assert StateStore(tmp_path, validate=lambda data: None).load() == DATA
