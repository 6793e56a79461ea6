"""A process with the run modules already imported that forks each run's worker: `python -m
batchlab.runner.worker_server FD`, started by forked_workers.py with its end of a Unix socket as FD.

Why: a fresh `python -m batchlab.runner.worker` imports torch and torch._dynamo (which every
torch.optim optimizer imports on its first use) before its run can start: ~3.5 s on a 2-core Xeon,
more than the training of a small run (the README's demo sweep spent 62% of its wall time outside
training, docs/performance.md). A fork of this process starts at once and is as separate as a fresh
one: its own process, process group, memory limit, stdout and stderr; the threads, the allocator's
settings and the RNG seeds are set by the run itself. This process never computes with a tensor,
so no OpenMP thread pool is half copied into a fork. It does load each run's registered dataset
before the fork (numpy only: data/registry.preload), so that runs after the first on the same data
skip reading and verifying it; that time counts in the run's start-up and CPU time.

Messages (SOCK_SEQPACKET: one JSON object per packet):
    sweep → server  {"job": "...", "memory_limit": int | null} with two file descriptors: the
                    worker's stdout (its messages, worker.py) and stderr
    server → sweep  {"ready": true} once the imports are done
                    {"started": pid} once the worker leads its own process group
                    {"ended": pid, "returncode": int (negative: the signal), "cpu_seconds": float},
                    its CPU time with that of the processes it waited for (os.wait4) and this
                    server's loading its data
The server ends when the sweep closes its end or dies, and kills the workers still running first.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
import traceback

MAX_MESSAGE = 1 << 20  # a job is a RunSpec or InferSpec and a few paths: a few kB
# The name a forked worker shows in ps and top: its command line is this server's.
RUN_PROCESS_NAME = "batchlab-run"


def preload() -> None:
    """Import what every run imports, so that its fork does not (torch, torch._dynamo: ~3.5 s)."""
    import psutil  # noqa: F401  the worker reads its start time with it
    import torch._dynamo  # noqa: F401  torch.optim's optimizers import it on their first step

    from ..infer import measure  # noqa: F401
    from ..train import strategies  # noqa: F401
    from . import worker  # noqa: F401


def serve(connection: socket.socket) -> None:
    preload()
    children: dict[int, float] = {}  # worker pid → CPU seconds this process spent on its data (preload_data)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so that the wake-up fd is written
    signal.set_wakeup_fd(wake_write)
    connection.send(json.dumps({"ready": True}).encode())
    try:
        while True:
            readable, _, _ = select.select([connection, wake_read], [], [])
            if wake_read in readable:
                os.read(wake_read, 4096)
                for message in reaped(children):
                    connection.send(json.dumps(message).encode())
            if connection in readable:
                message, fds, _, _ = socket.recv_fds(connection, MAX_MESSAGE, 2)
                if not message:
                    break  # the sweep closed its end, or died
                try:
                    if len(fds) != 2:
                        raise ValueError(f"{len(fds)} file descriptors instead of 2")
                    request, requested_at, cpu_before = json.loads(message), time.time(), time.process_time()
                    preload_data(request.get("job"))
                    data_cpu = time.process_time() - cpu_before
                    pid = fork_worker(request, fds, (connection.fileno(), wake_read, wake_write), requested_at)
                except Exception as error:  # this request only (fork refused: EAGAIN, ENOMEM): said, and on
                    for fd in fds:
                        os.close(fd)
                    connection.send(json.dumps({"refused": f"{type(error).__name__}: {error}"}).encode())
                    continue
                children[pid] = data_cpu
                connection.send(json.dumps({"started": pid}).encode())
    except (BrokenPipeError, ConnectionResetError):
        pass  # the sweep is gone
    finally:
        for pid in children:  # nobody is left to record them: no orphans
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:  # and waited for: their CPU time reaches the sweep with this process's
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def reaped(children: dict[int, float]) -> list[dict]:
    """The workers that have ended since the last call, waited for; the CPU time of each with what
    this process spent loading its data."""
    ended = []
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        data_cpu = children.pop(pid, 0.0)
        ended.append({"ended": pid, "returncode": os.waitstatus_to_exitcode(status),
                      "cpu_seconds": usage.ru_utime + usage.ru_stime + data_cpu})
    return ended


def preload_data(job_text) -> None:
    """The job's registered dataset, loaded in this process once for every run forked after it
    (data/registry.preload: Fashion-MNIST's read, gunzip and SHA-256 took ~0.35 s of each run).
    Whatever is wrong with the job or its data is the run's to find and report: nothing is held then."""
    from ..data import registry

    try:
        job = json.loads(job_text)
        registry.preload(job["spec"]["dataset"], job.get("data_dir"))
    except Exception:  # this server serves on; the run loads its data itself and says what is wrong
        registry.drop_preloaded()


def fork_worker(request: dict, fds: list[int], keep_out: tuple[int, ...], requested_at: float) -> int:
    """Fork a worker for the request's job, writing to the two descriptors it came with.
    `requested_at`: when the request came, the start of the run's start-up (its data loaded here, then
    the fork)."""
    stdout, stderr = fds
    pid = os.fork()
    if pid == 0:
        run_forked(request, stdout, stderr, keep_out, requested_at)  # never returns
    # Both sides make the worker a group leader, so that it is one whichever runs first: the sweep
    # stops a worker and what it started by its group (sweep.stop).
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # it has done so itself, or already ended
    os.close(stdout)
    os.close(stderr)
    return pid


def run_forked(request: dict, stdout: int, stderr: int, keep_out: tuple[int, ...], requested_at: float) -> None:
    """The forked worker: its own group, output, limits and signal handling, then the job, as
    worker.py runs it; exits with the job's exit code."""
    code = 1
    try:
        os.setpgid(0, 0)
        name_process(RUN_PROCESS_NAME)
        null = os.open(os.devnull, os.O_RDONLY)  # first: what goes wrong from here on is the run's to report
        for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in keep_out:
            os.close(fd)
        reseed_numpy()
        from .worker import limit_memory, run

        if request.get("memory_limit"):
            limit_memory(request["memory_limit"])
        code = run(request["job"], startup_seconds=time.time() - requested_at, forked=True)
    except SystemExit as exit_:  # as a fresh worker would exit
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)  # never back into the server's loop, nor its exit handlers


def reseed_numpy() -> None:
    """numpy's global generator was seeded once, in the server: every fork would draw the same
    numbers where a fresh process draws its own (Python's `random` reseeds itself at a fork)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def name_process(name: str) -> None:
    """Set this process's name (Linux: what ps -o comm and psutil's name() show)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name)
    except OSError:
        pass


def main() -> None:
    serve(socket.socket(fileno=int(sys.argv[1])))
    os._exit(0)  # at once: tearing down torch's modules takes a second, and the sweep may be waiting


if __name__ == "__main__":
    main()
