"""The sweep's side of worker_server.py: run workers forked from a server that has already imported
what a run imports, instead of fresh processes that import it all again (~3.5 s a run).

One server per sweep process. The command starts it as it begins (`prestarted`), so that the
server's imports overlap the command's own, and `ready()` waits for it before the first run's noise
watch (its imports would count as another process's CPU time). A new one replaces it whenever the
environment or the working directory has changed since it started: a fork sees the server's, and a
fresh worker would have seen the sweep's. It ends with the sweep (its socket closes), at once if
still importing. Only on Linux, where forking a process that
has imported torch but run nothing is safe and the server is tested; elsewhere `start` returns None
and the sweep starts a fresh worker.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading

from .worker_server import MAX_MESSAGE

# How long the server may take to import torch and the run modules, and to load a run's dataset
# (registry.preload: read, checksum, decode; CIFAR-100 from a slow disk on a busy machine) and fork it.
READY_TIMEOUT_SECONDS = 120
START_TIMEOUT_SECONDS = 300


class ForkedWorker:
    """A forked worker, with what the sweep uses of subprocess.Popen: pid, stdout, poll, wait."""

    def __init__(self, pid: int):
        self.pid = pid
        self.stdout = None
        self.returncode: int | None = None
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"run worker {self.pid}", timeout)
        return self.returncode

    def end(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()


class ServerGone(RuntimeError):
    pass


class WorkerServer:
    """One worker_server.py process and the thread that reads what it says."""

    def __init__(self):
        self.serves = (dict(os.environ), os.getcwd())
        self.lock = threading.Lock()
        self.replies: queue.Queue = queue.Queue()  # "ready" and "started" messages, in order; None: gone
        self.workers: dict[int, ForkedWorker] = {}
        self.cpu_seconds = 0.0  # of the workers that have ended
        self.errors = tempfile.TemporaryFile()  # its traceback, should it fail
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.socket = ours
        with theirs:
            # Its own session: a terminal's Ctrl-C reaches the sweep, which stops the workers itself.
            self.process = subprocess.Popen([sys.executable, "-m", "batchlab.runner.worker_server", str(theirs.fileno())],
                                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=self.errors, start_new_session=True)
        self.is_ready = False  # its imports done (wait_ready); until then it would notice a close only after them
        try:
            threading.Thread(target=self._listen, name="batchlab-worker-server", daemon=True).start()
        except BaseException:
            self.close()
            raise

    def wait_ready(self) -> None:
        """Until the server has imported what a run imports; closed if it fails or the wait is interrupted."""
        if self.is_ready:
            return
        try:
            self._expect("ready", READY_TIMEOUT_SECONDS)
            if not self.alive():  # said it was ready, then died: its first fork would fail
                raise ServerGone(f"the run-worker server ended after its start ({self._last_error()})")
        except BaseException:  # failed, or Ctrl-C while it imports
            self.close()
            raise
        self.is_ready = True

    def start(self, job: str, stderr: int, memory_limit: int | None) -> ForkedWorker:
        """Fork a worker for `job`; its messages come on the returned worker's stdout. Should this
        fail or be interrupted half-way, the server is closed (with any worker it forked): its
        replies would no longer match the requests."""
        read_end, write_end = os.pipe()
        try:
            with self.lock:
                request = json.dumps({"job": job, "memory_limit": memory_limit}).encode()
                socket.send_fds(self.socket, [request], [write_end, stderr])
                os.close(write_end)  # the worker has its own copy: its end closes when it ends
                write_end = None
                worker = self._expect("started", START_TIMEOUT_SECONDS)
                worker.stdout = os.fdopen(read_end, "r")
                return worker
        except BaseException:
            for end in (read_end, write_end):
                if end is not None:
                    os.close(end)
            self.close()
            raise

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if not self.is_ready:  # still importing: it would read the closed socket only seconds later
            self.process.kill()
        try:  # the server ends when its end closes; shutdown wakes the listener blocked on it too
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # stopped, or stuck in a fork
            self.process.kill()
            self.process.wait()

    def _expect(self, kind: str, timeout: float):
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            reply = None
        if reply is not None and "refused" in reply:
            raise ServerGone(f"the run-worker server could not fork a worker: {reply['refused']}")
        if reply is None or kind not in reply:
            raise ServerGone(f"the run-worker server did not answer ({self._last_error()})")
        return reply.get("worker", reply)

    def _last_error(self) -> str:
        self.errors.seek(0)
        lines = [line for line in self.errors.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self.process.poll()}"

    def _listen(self) -> None:
        try:
            while True:
                packet = self.socket.recv(MAX_MESSAGE)
                if not packet:
                    break
                message = json.loads(packet)
                if "started" in message:
                    worker = self.workers[message["started"]] = ForkedWorker(message["started"])
                    self.replies.put({"started": True, "worker": worker})
                elif "ended" in message:
                    self.cpu_seconds += message["cpu_seconds"]
                    worker = self.workers.pop(message["ended"], None)
                    if worker is not None:
                        worker.end(message["returncode"])
                else:
                    self.replies.put(message)
        except OSError:
            pass  # closed by close()
        finally:
            self.replies.put(None)
            # The server is gone: its workers end with it (worker.py's exit_with_parent). Their
            # exit codes are lost; 3 is what exit_with_parent exits with.
            for worker in list(self.workers.values()):
                worker.end(3)


_server: WorkerServer | None = None
_server_failed = False  # this process could not start one: its runs get fresh workers
_server_lock = threading.Lock()


def supported() -> bool:
    """Whether runs get forked workers here: on Linux, unless $BATCHLAB_FRESH_WORKERS is 1."""
    return (sys.platform == "linux" and hasattr(socket, "send_fds") and not _server_failed
            and os.environ.get("BATCHLAB_FRESH_WORKERS") != "1")


def prestart() -> None:
    """Start the server without waiting for it, where workers are forked and none is running: its
    imports (~3.5 s) then overlap the command's own (torch, the dataset's checks) on a second core.
    `ready()` waits for it; `prestarted` closes it if the command fails before that."""
    global _server, _server_failed
    with _server_lock:
        if _server is None and supported():
            try:
                _server = WorkerServer()
            except OSError:
                _server_failed = True


@contextlib.contextmanager
def prestarted(wanted: bool = True):
    """The block with the server starting beside it (`prestart`, if `wanted`); a server still
    importing when the block fails or is interrupted is killed at once (no run will need it)."""
    if wanted:
        prestart()
    try:
        yield
    except BaseException:
        with _server_lock:
            if _server is not None and not _server.is_ready:
                _discard()
        raise


def ready() -> WorkerServer | None:
    """The server for this environment and working directory, started (or prestarted) and waited
    for; None where workers are not forked, or no server could be started (the runs then get fresh
    workers, which show whatever stopped it)."""
    global _server, _server_failed
    with _server_lock:
        if not supported():
            return None
        # A prestarted server that died while importing says why in wait_ready; one that died since is replaced.
        if _server is not None and ((_server.is_ready and not _server.alive())
                                    or _server.serves != (dict(os.environ), os.getcwd())):
            _discard()
        try:
            if _server is None:
                _server = WorkerServer()
            _server.wait_ready()
        except (ServerGone, OSError):
            _server, _server_failed = None, True
        except BaseException:  # interrupted: wait_ready has closed it
            _server = None
            raise
        return _server


def start(job: str, stderr: int, memory_limit: int | None) -> ForkedWorker | None:
    """A worker forked for `job` (see WorkerServer.start); None where workers are not forked or
    the server did not fork one (stopped, or gone: it is replaced for the next run)."""
    server = ready()
    if server is None:
        return None
    try:
        return server.start(job, stderr, memory_limit)
    except (ServerGone, OSError):
        with _server_lock:
            if _server is server:
                _discard()
        return None


@atexit.register
def _close_at_exit() -> None:
    """The sweep is ending: so does its server (it would too once the socket closes, a moment later)."""
    with _server_lock:
        if _server is not None:
            _discard()


def _discard() -> None:
    global _server
    _server.close()
    _server = None


def reaped_cpu_seconds() -> float:
    """CPU seconds of the forked workers the current server has waited for, with what they waited
    for and what the server spent loading their data: what resource.getrusage(RUSAGE_CHILDREN)
    counts for fresh workers. A server this process
    has closed and waited for is in RUSAGE_CHILDREN itself, its workers with it (the server waits
    for every one, killed ones too), so its count is dropped with it."""
    server = _server
    return server.cpu_seconds if server is not None else 0.0
