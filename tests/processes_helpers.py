"""Helpers for tests that watch real processes: a sweep, its run worker, the run's workers."""

from __future__ import annotations

import time

import psutil

from batchlab.runner.machine_noise import is_run_worker


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_workers(pid: int) -> list[psutil.Process]:
    """The run workers below `pid`: forked by its run-worker server, or fresh."""
    found = []
    for process in descendants(pid):
        try:
            if is_run_worker(process.cmdline(), process.name()):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def spawned_workers(pid: int) -> list[psutil.Process]:
    """The hogwild workers / DDP ranks (multiprocessing spawn children) below `pid`."""
    found = []
    for process in descendants(pid):
        try:
            if "spawn_main" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_for(condition, timeout: float = 120.0):
    """Poll `condition` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def still_alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    time.sleep(0.5)
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive
