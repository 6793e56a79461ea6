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


def l2_cache_bytes(cpu_root: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Bytes of the level-2 data cache of one core, from Linux's sysfs (None where it cannot be
    read: not Linux, or a VM that hides its caches)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    try:
        for index in sorted(os.listdir(cpu_root)):
            folder = os.path.join(cpu_root, index)
            with open(os.path.join(folder, "level")) as level, open(os.path.join(folder, "type")) as kind:
                if level.read().strip() != "2" or kind.read().strip() == "Instruction":
                    continue
            with open(os.path.join(folder, "size")) as size_file:
                size = size_file.read().strip()
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return None
