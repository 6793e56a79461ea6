"""What else the machine did while a run ran, and whether the run's timings can be trusted.

The sweep process wraps each run's worker in a NoiseWatch:

    with NoiseWatch() as watch:          # counters read before the worker starts
        outcome = run_in_worker(...)     # the worker runs and is waited for
    outcome.result.environment["machine_noise"] = watch.summary

How "other processes' CPU time" is measured, without watching every process:
- the machine's busy CPU time (/proc/stat via psutil.cpu_times: user, nice, system, irq, softirq;
  not idle, iowait or steal) grew by B during the watch;
- the run's process tree used C of it: resource.getrusage(RUSAGE_CHILDREN) of this process grows by
  the CPU time of every child once it has been waited for, including what that child had
  collected from its own waited-for children (the worker joins its hogwild workers / DDP ranks /
  loader workers), so the worker's start-up and imports count as the run's, not as "other"; a
  worker forked by the run-worker server is waited for by the server, which reports the same
  figure (os.wait4), with its own CPU time loading the run's data (forked_workers.reaped_cpu_seconds);
- this process (the sweep: its output reader, heartbeat and our sampler threads) used S
  (RUSAGE_SELF);
- other processes used B - C - S, shown as a share of the machine's CPU capacity over the watch
  (all fields of /proc/stat: wall seconds x logical CPUs, as the same counter sees it).
Small parts of the run can escape C: a process its worker started but never waited for
(multiprocessing's resource tracker, ~0.05 CPU s), and /proc/stat counts in ticks (10 ms per
CPU); both are far below the limits below. Measured on an idle 2-CPU VM: other processes 0.2-0.8%
of the capacity for single, DDP and hogwild runs (whose ranks' ~7 CPU s land in C); with two busy
loops, 66-70%.

Recorded but not part of the flag: the load average (it counts the run's own threads and lags
by a minute), the CPU frequency (turbo and power saving move it on a quiet machine too; many VMs
report a constant) and the step-time spread the training loop records (train/engine.py: it varies
with model, batch size and strategy; a DDP run on a quiet machine shows 2.2). A slowdown the
guest cannot see (a busy VM host that reports no steal) is not detected.

A light daemon thread samples, every SAMPLE_SECONDS, the load average, the CPU frequency and
other batchlab runs (processes running `-m batchlab.runner.worker` that this process did not
start): one /proc scan, ~2 ms, every 2 s.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import psutil

from . import forked_workers
from .worker_server import RUN_PROCESS_NAME

SAMPLE_SECONDS = 2.0
WORKER_MODULE = "batchlab.runner.worker"

# The flag rule: a run is noisy when any of these held over its watch.
# Other processes took more than this share of the machine's CPU capacity. A quiet machine's
# background (desktop, daemons, kernel threads) and the tick-sampling error stay well below 5%; one
# busy process is 50% of 2 CPUs, 25% of 4, 12.5% of 8: at 15% one core of four busy is flagged,
# a browser tab ticking over is not.
OTHER_CPU_SHARE_LIMIT = 0.15
# ... or, on a machine without idle CPU, other processes used at least this many CPUs: on many
# cores one busy process is a small share, yet when the run keeps every core busy that process
# takes time the run's threads needed (and all of them wait for the slowest at each step).
SATURATED_IDLE_SHARE = 0.10  # idle + iowait below this share of the capacity: no CPU to spare
OTHER_CPUS_WHEN_SATURATED = 0.5
# The hypervisor gave this share of the VM's CPU time to other guests (steal): the run's clock
# ran while its virtual CPUs did not. Dedicated hardware has 0; a quiet cloud VM well under 1%.
STEAL_SHARE_LIMIT = 0.05
# Another batchlab run on the machine at any time of the watch: its timings and ours are both
# suspect (it competes for the same cores and memory bandwidth), whatever its CPU share.

BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")  # guest time is already inside user/nice
IDLE_FIELDS = ("idle", "iowait")
ALL_FIELDS = BUSY_FIELDS + IDLE_FIELDS + ("steal",)


def cpu_counters() -> dict[str, float]:
    """The machine's cumulative CPU seconds per kind (all CPUs summed); absent fields as 0."""
    times = psutil.cpu_times()
    return {name: getattr(times, name, 0.0) for name in ALL_FIELDS}


def rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_process_seconds() -> float:
    """CPU seconds of the run workers (and what they waited for) that have ended so far: fresh
    ones this process waited for, forked ones the run-worker server waited for."""
    return rusage_seconds(resource.RUSAGE_CHILDREN) + forked_workers.reaped_cpu_seconds()


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # not on this platform
        return None


def cpu_mhz() -> float | None:
    """The current CPU frequency (mean over CPUs) where the OS tells it, else None."""
    try:
        frequency = psutil.cpu_freq()
    except Exception:  # unreadable /sys files, unsupported platform: not a reason to fail a run
        return None
    return round(frequency.current, 0) if frequency and frequency.current else None


def is_run_worker(command: list[str], name: str = "") -> bool:
    """A batchlab run worker, by its command line (`python -m batchlab.runner.worker`) or, forked
    by the run-worker server (whose command line it keeps), by its process name."""
    return name == RUN_PROCESS_NAME or any(flag == "-m" and module == WORKER_MODULE
                                           for flag, module in zip(command, command[1:]))


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process `pid` is `ancestor` or one of its descendants (True if it is gone: a
    process that ended meanwhile is no run of anybody's now)."""
    try:
        process = psutil.Process(pid)
        return pid == ancestor or any(parent.pid == ancestor for parent in process.parents())
    except psutil.Error:
        return True


def other_batchlab_runs(me: int | None = None) -> list[int]:
    """Pids of batchlab run workers on this machine that are not this process (`me`) or started by
    it: another sweep's runs, or a `batchlab train` in another terminal."""
    me = os.getpid() if me is None else me
    workers = {process.info["pid"]: process.info["ppid"]
               for process in psutil.process_iter(["pid", "ppid", "cmdline", "name"])
               if is_run_worker(process.info.get("cmdline") or [], process.info.get("name") or "")}
    # A forked run's own forks (DataLoader workers) carry its name: one run, counted once.
    return sorted(pid for pid, parent in workers.items() if parent not in workers and not descends_from(pid, me))


class NoiseWatch:
    """Counters before and after one run, and a sampler thread in between; `summary` (a JSON-able
    dict, set on exit) says what else the machine did and whether the run is noisy."""

    def __init__(self, sample_seconds: float = SAMPLE_SECONDS):
        self.sample_seconds = sample_seconds
        self.summary: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loads: list[float] = []  # 1-minute load averages sampled
        self._mhz: list[float] = []
        self._others: set[int] = set()  # other batchlab run workers seen

    def __enter__(self) -> NoiseWatch:
        self._load_before, self._mhz_before = load_average(), cpu_mhz()
        self._others.update(other_batchlab_runs())
        # Last, and close together: the counters the deltas are taken from.
        self._started = time.monotonic()
        self._machine = cpu_counters()
        self._children, self._self = run_process_seconds(), rusage_seconds(resource.RUSAGE_SELF)
        self._thread = threading.Thread(target=self._sample, name="batchlab-noise-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._started
        machine = cpu_counters()
        children, own = run_process_seconds(), rusage_seconds(resource.RUSAGE_SELF)
        self._stop.set()
        self._thread.join(timeout=5)
        try:  # a measuring problem must never cost the run its result
            delta = {name: machine[name] - self._machine[name] for name in ALL_FIELDS}
            self.summary = summarize(delta, wall, children - self._children, own - self._self, sorted(self._others),
                                     self._load_before, load_average(), self._loads, self._mhz_before, self._mhz)
        except Exception as error:
            self.summary = {"noisy": None, "reason": None, "error": f"{type(error).__name__}: {error}"}

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_seconds):
            try:
                load, mhz = load_average(), cpu_mhz()
                if load:
                    self._loads.append(load[0])
                if mhz:
                    self._mhz.append(mhz)
                self._others.update(other_batchlab_runs())
            except Exception:  # a process table read that fails once: the next sample tries again
                pass


def summarize(delta: dict[str, float], wall: float, run_cpu: float, sweep_cpu: float, others: list[int],
              load_before: list[float] | None, load_end: list[float] | None, loads: list[float],
              mhz_before: float | None, mhz: list[float]) -> dict:
    """The watch's figures and its verdict (the flag rule above)."""
    capacity = sum(delta.values())  # wall x logical CPUs, as /proc/stat counted them
    cpus = psutil.cpu_count() or 1
    busy = sum(delta[name] for name in BUSY_FIELDS)
    other = max(0.0, busy - run_cpu - sweep_cpu)
    share = other / capacity if capacity > 0 else 0.0
    idle = sum(delta[name] for name in IDLE_FIELDS) / capacity if capacity > 0 else 1.0
    steal = delta["steal"] / capacity if capacity > 0 else 0.0
    other_cpus = other / wall if wall > 0 else 0.0
    reasons = verdict(share, other_cpus, idle, steal, others, cpus)
    return {
        "noisy": bool(reasons), "reason": "; ".join(reasons) or None,
        "wall_seconds": round(wall, 3), "cpus": cpus,
        "other_cpu_seconds": round(other, 3), "other_cpu_share": round(share, 4), "other_cpus": round(other_cpus, 3),
        "run_cpu_seconds": round(run_cpu, 3), "sweep_cpu_seconds": round(sweep_cpu, 3),
        "idle_share": round(idle, 4), "steal_share": round(steal, 4),
        "other_batchlab_runs": others,
        "load_before": load_before, "load_end": load_end, "load_max": max(loads, default=None),
        "cpu_mhz_before": mhz_before, "cpu_mhz_min": min(mhz, default=None), "cpu_mhz_max": max(mhz, default=None),
        "samples": len(loads),
        "limits": {"other_cpu_share": OTHER_CPU_SHARE_LIMIT, "saturated_idle_share": SATURATED_IDLE_SHARE,
                   "other_cpus_when_saturated": OTHER_CPUS_WHEN_SATURATED, "steal_share": STEAL_SHARE_LIMIT},
    }


def verdict(share: float, other_cpus: float, idle: float, steal: float, others: list[int], cpus: int) -> list[str]:
    """Why the run's timings are not trustworthy, one short line per reason; empty: they are."""
    reasons = []
    if others:
        pids = ", ".join(map(str, others[:3])) + (", …" if len(others) > 3 else "")
        reasons.append(f"another batchlab run was active (pid {pids})")
    if share > OTHER_CPU_SHARE_LIMIT:
        reasons.append(f"other processes used {share:.0%} of the {cpus} CPUs during the run")
    elif idle < SATURATED_IDLE_SHARE and other_cpus >= OTHER_CPUS_WHEN_SATURATED:
        reasons.append(f"other processes used {other_cpus:.1f} CPUs while no CPU was idle ({idle:.0%} idle)")
    if steal > STEAL_SHARE_LIMIT:
        reasons.append(f"the hypervisor took {steal:.0%} of the CPU time (steal)")
    return reasons
