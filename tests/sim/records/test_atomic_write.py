"""atomic_write under interruption: a signal held back while the temporary file is created is delivered the moment the
hold ends; the temporary file must not outlive the interrupt (a stray `.tmp-*` file in a sweep's cells was seen when
Ctrl-C landed there)."""

import contextlib

import pytest

import sim.workers
from sim.records.io import atomic_write


def test_interrupt_delivered_as_the_hold_ends_leaves_no_temporary_file(tmp_path, monkeypatch):
    @contextlib.contextmanager
    def deferred_then_interrupted():
        yield
        raise KeyboardInterrupt()  # the held-back Ctrl-C, delivered as the signals are unblocked

    monkeypatch.setattr(sim.workers, "signals_deferred", deferred_then_interrupted)
    target = tmp_path / "cell.json"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_whole_file_replaces_the_old_one(tmp_path):
    target = tmp_path / "cell.json"
    target.write_text("old\n")
    atomic_write(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]
