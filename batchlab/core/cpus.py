"""How many CPUs this process may use, and what they are (from /proc/cpuinfo)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpuinfo_value(*names: str) -> str | None:
    """The value of the first /proc/cpuinfo line whose key starts with one of `names` (None where
    there is no such line or no /proc/cpuinfo: not Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str | None:
    """The CPU's vendor string, e.g. GenuineIntel or AuthenticAMD (None where it cannot be told)."""
    return cpuinfo_value("vendor_id")
