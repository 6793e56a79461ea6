"""One run in its own process: `python -m batchlab.runner.worker` reads a job (JSON) on stdin (a worker
forked by worker_server.py is handed it), runs it and reports on stdout, one JSON message per line,
each prefixed so that anything else a user model prints cannot be mistaken for a message. A job is
a training run ("train": a RunSpec; with "weights_out", the trained weights are written to that
file) or an inference measurement ("infer": an InferSpec; with "weights_in", the weights to load).

    @batchlab {"event": "progress"}
    @batchlab {"event": "epoch", "record": {...}}
    @batchlab {"event": "result", "result": {...}}
    @batchlab {"event": "error", "status": "FAILED" | "OOM", "error": "one line"}

"progress" says the run is alive (heartbeat.py): sent as it starts and then at most once a second
while it trains, evaluates or watches its team of worker processes. The sweep ends a worker that
sends nothing for $BATCHLAB_WORKER_TIMEOUT seconds.

A process of its own per run (fresh, or forked from a server that has only imported modules and loaded its data) keeps
thread settings, allocator state, memory growth and crashes inside the run. The worker never
touches the store: the sweep process is its only writer.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
import traceback

from ..core.errors import one_line
from ..core.parent import exit_with_parent
from ..spec.kinds import KINDS

PREFIX = "@batchlab "
PROGRESS_LINE = PREFIX + json.dumps({"event": "progress"}) + "\n"


def send(message: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def send_progress() -> None:
    sys.stdout.write(PROGRESS_LINE)
    sys.stdout.flush()


def train_job(spec, job: dict):
    """A training run in this process; its weights, if asked for, written to the job's file."""
    import torch

    from ..train.strategies import run

    result = run(spec, job.get("data_dir"), keep_weights=bool(job.get("weights_out")),
                 on_epoch=lambda record: send({"event": "epoch", "record": dataclasses.asdict(record)}))
    if result.weights is not None:
        torch.save(result.weights, job["weights_out"])
        result.weights = None
    return result


def infer_job(spec, job: dict):
    """An inference measurement in this process, with the job's weights if it names a file."""
    from ..infer.measure import measure

    weights = open(job["weights_in"], "rb").read() if job.get("weights_in") else None
    return measure(spec, job.get("data_dir"), weights)


JOBS = {"train": train_job, "infer": infer_job}  # run kind → how this process performs it


def perform(job: dict):
    """Run the job in this process and return its result."""
    from ..core import heartbeat
    from ..device.heap import keep_freed_memory
    from ..device.threads import flush_denormals

    heartbeat.beat()  # imports done; next the data load (~1 s; ~0 preloaded by the server), then warm-up and steps beat
    flush_denormals()  # this process is the run's own: before its first tensor work
    keep_freed_memory()
    kind = KINDS[job["kind"]]
    return JOBS[kind.name](kind.spec_from_dict(job["spec"]), job)


def classify(error: BaseException) -> str:
    """Run status for an exception: OOM for any out-of-memory condition, else FAILED."""
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return "OOM"
    text = str(error).lower()
    if isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text):
        return "OOM"
    return "FAILED"


def limit_memory(limit: int) -> None:
    """In the worker before it starts: cap its address space, so that a run that needs more
    fails with an allocation error (stored as OOM) instead of waking the kernel's OOM killer."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> int:
    """`python -m batchlab.runner.worker`: the job on stdin."""
    import psutil

    # Process start → now: interpreter start-up and imports, reported as the run's start-up cost.
    startup_seconds = time.time() - psutil.Process().create_time()
    return run(sys.stdin.read(), startup_seconds)


def run(job_text: str, startup_seconds: float, forked: bool = False) -> int:
    """Run the job in this process, reporting on stdout; the exit code. `startup_seconds`: from
    the process's start (or, forked, from the request to the server, which loads the run's
    registered dataset before it forks: worker_server.py) to here. `forked`: this process was forked from
    the run-worker server, which imported torch before: the run's start-up and wall time leave out
    those imports (~3.5 s), which a fresh process's include; the result says which it was."""
    exit_with_parent()
    job = json.loads(job_text)
    try:
        from ..core import heartbeat

        heartbeat.install(send_progress)
        heartbeat.beat()  # started: the sweep hears from this process before the imports of the run
        result = perform(job)
        if KINDS[job["kind"]].records_startup:
            result.startup_seconds = startup_seconds
            result.wall_seconds += startup_seconds
        result.environment["run_process"] = "forked" if forked else "fresh"
        send({"event": "result", "kind": job["kind"], "result": dataclasses.asdict(result)})
        return 0
    except Exception as error:  # reported to the sweep, which stores it; the traceback goes to stderr
        traceback.print_exc()
        send({"event": "error", "status": classify(error), "error": one_line(error)})
        return 1


if __name__ == "__main__":
    sys.exit(main())
