"""GroupCommit: who processes what, in which batch, and who gets which result or error."""

from __future__ import annotations

import threading

import pytest

from service.group_commit import GroupCommit


class Recorder:
    """A `process` that records each batch and the thread it ran on; the first batch can be held open."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[tuple[list, str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: list) -> list:
        self.batches.append((list(items), threading.current_thread().name))
        self.started.set()
        self.release.wait(10)
        return [ValueError(f"bad {i}") if isinstance(i, int) and i < 0 else i * 10 for i in items]


def _run_in_threads(group: GroupCommit, items: list, results: dict) -> list[threading.Thread]:
    def call(item):
        try:
            results[item] = group.run(item)
        except Exception as e:  # noqa: BLE001 - the test compares what each caller got
            results[item] = e
    threads = [threading.Thread(target=call, args=(i,), name=f"caller-{i}") for i in items]
    for t in threads:
        t.start()
    return threads


def test_a_lone_caller_processes_its_own_item_on_its_own_thread():
    process = Recorder()
    assert GroupCommit(process).run(3) == 30
    assert process.batches == [([3], threading.current_thread().name)]


def _behind_a_held_batch(later: list) -> tuple[dict, list]:
    """Caller 1's batch is held open while the `later` callers queue, one at a time in that order; then it is let
    go. Returns (what each caller got, the batches processed)."""
    process = Recorder(hold_first=True)
    group = GroupCommit(process)
    results: dict = {}
    threads = _run_in_threads(group, [1], results)
    assert process.started.wait(10)
    for n, item in enumerate(later, start=1):
        threads += _run_in_threads(group, [item], results)
        while len(group._queue) < n:
            threading.Event().wait(0.001)
    process.release.set()
    for t in threads:
        t.join(10)
    return results, process.batches


def test_callers_that_arrive_during_a_batch_form_the_next_one_led_by_the_oldest():
    results, batches = _behind_a_held_batch([2, 3, 4, 5])
    assert results == {1: 10, 2: 20, 3: 30, 4: 40, 5: 50}
    assert batches == [([1], "caller-1"), ([2, 3, 4, 5], "caller-2")]


def test_an_error_result_is_raised_to_its_caller_only():
    results, _ = _behind_a_held_batch([-2, 3])
    assert isinstance(results[-2], ValueError) and str(results[-2]) == "bad -2"
    assert results[1] == 10 and results[3] == 30


def test_a_batch_that_raises_fails_each_of_its_callers_and_the_next_batch_still_runs():
    calls = []

    def process(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("store down")
        return [i for i in items]

    group = GroupCommit(process)
    with pytest.raises(RuntimeError, match="store down"):
        group.run("a")
    assert group.run("b") == "b"
    assert calls == [["a"], ["b"]]


def test_a_process_that_loses_results_is_an_error_not_a_wrong_answer():
    group = GroupCommit(lambda items: items[:-1])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.run("x")
    assert not group._leading  # the lead was given back: the next caller is not stuck behind it


def test_max_items_caps_a_batch_by_whole_callers_and_the_rest_form_the_next():
    """Callers queued behind a held batch are taken oldest first while their items fit in max_items (a caller's
    items are never split; one caller larger than the cap still goes alone)."""
    process = Recorder(hold_first=True)
    group = GroupCommit(process, max_items=3)
    results: dict = {}

    def call(name, items):
        results[name] = group.run_all(items)

    threads = [threading.Thread(target=call, args=("first", [1]))]
    threads[0].start()
    assert process.started.wait(10)
    for n, (name, items) in enumerate([("a", [2, 3]), ("b", [4]), ("c", [5, 6]), ("d", [7, 8, 9, 10])], start=1):
        threads.append(threading.Thread(target=call, args=(name, items)))
        threads[-1].start()
        while len(group._queue) < n:
            threading.Event().wait(0.001)
    process.release.set()
    for t in threads:
        t.join(10)
    assert [items for items, _ in process.batches] == [[1], [2, 3, 4], [5, 6], [7, 8, 9, 10]]
    assert results == {"first": [10], "a": [20, 30], "b": [40], "c": [50, 60], "d": [70, 80, 90, 100]}
