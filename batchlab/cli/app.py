"""The `batchlab` command: parses flags, calls the library, prints. No logic of its own."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core.errors import UserError
from ..core.records import FAILURES
from ..report.screen import console
from ..spec.experiment import EXECUTOR_KEYS, EXECUTORS
from ..spec.kinds import kind_of
from ..spec.run import InferSpec, RunSpec
from .options import flag_grid, spec_values, with_option_group, with_spec_options

app = typer.Typer(help="Measure how batch size and parallelism shape neural-network training on your hardware.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="List, download and verify datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


# Off a terminal (pipe, file, CI log) rich would wrap at 80 columns; tables need more.
class Screen:
    """stdout as a Rich console made at each use, so it prints at the width of that moment
    ($COLUMNS if set, else the terminal's, else 200: screen.terminal_width)."""

    def __getattr__(self, name: str):
        return getattr(console(), name)


out = Screen()
err = Console(stderr=True, soft_wrap=True)  # messages stay one line, whatever the width

REGISTERED_HELP = "A registered dataset: mnist, fashion-mnist, cifar10, cifar100 or cifar100-coarse (batchlab data list)."
DbOpt = Annotated[Path, typer.Option("--db", help="SQLite results store.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the dataset files; when given, the only place looked in.")]
MemoryOpt = Annotated[Optional[float], typer.Option("--memory-limit", help="GiB of address space per run process; beyond it a run ends as OOM.")]
OversubscribeOpt = Annotated[bool, typer.Option("--oversubscribe", help="Run even where workers × threads exceed the available CPUs (timings then include contention).")]


def unset_option(kind: type, flag: str, text: str):
    """An option of `kind` that defaults to None: "not given", so that another source may fill it."""
    return Annotated[Optional[kind], typer.Option(flag, help=text)]


# Where the runs go (sweep, infer, advise: with_executor_options). Each defaults to None, so that an
# experiment file's [executor] table fills what the command line leaves out.
EXECUTOR_FLAGS = {
    "executor": unset_option(str, "--executor", "Where runs execute: local (one after another here, the default), "
                                                "ray (Ray tasks) or slurm (Slurm jobs); ray and slurm need "
                                                "batchlab[cluster]."),
    "ray_address": unset_option(str, "--ray-address", "With --executor ray: the cluster's address (host:port, "
                                                      "ray://…); none: a Ray started here for the sweep."),
    "slurm_partition": unset_option(str, "--slurm-partition", "With --executor slurm: the partition (default: the "
                                                              "cluster's)."),
    "slurm_time": unset_option(int, "--slurm-time", "With --executor slurm: each job's time limit, minutes "
                                                    "(default 60)."),
    "slurm_mem": unset_option(float, "--slurm-mem", "With --executor slurm: memory per job, GB (default: the "
                                                    "partition's)."),
    "slurm_option": unset_option(list[str], "--slurm-option", "With --executor slurm: an extra sbatch option "
                                                              "KEY=VALUE (repeatable), e.g. account=proj."),
    "slurm_folder": unset_option(Path, "--slurm-folder", "With --executor slurm: the job folder, on a file system the "
                                                         "nodes share (default: slurm-jobs beside --db)."),
    "detach": unset_option(bool, "--detach/--no-detach", "With --executor slurm: submit, store what has ended, and "
                                                         "leave the other jobs running; the same command again "
                                                         "collects them."),
}


def user_errors(command):
    """Turn batchlab's own errors into one line on stderr and exit code 2: no traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UserError, sqlite3.Error) as error:
            fail(str(error))
        except OSError as error:  # a path the user gave: name it and what is wrong, no traceback
            fail(f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error))
    return wrapper


def fail(message: str) -> None:
    """The one line a user error gets, and exit code 2."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def output_file(path: Path, flag: str) -> Path:
    """A file the command will write: not a folder; missing parent folders are created."""
    from ..core.errors import SpecError

    if path.is_dir():
        raise SpecError(f"{flag} {path} is a folder; give a file name, e.g. {path / ('report' + (path.suffix or '.out'))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def output_folder(path: Path, flag: str) -> Path:
    """A folder the command will write into: created if missing, refused if it is a file."""
    from ..core.errors import SpecError

    if path.exists() and not path.is_dir():
        raise SpecError(f"{flag} {path} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress_events(progress: Progress, may_start=None, left=None):
    """SweepEvents drawing one progress bar over runs, its text the current run and epoch (and,
    given `left`, the time left it says). `may_start`: SweepEvents.may_start (advise's budget)."""
    from ..report.training import outcome_line
    from ..runner.sweep import SweepEvents

    task = progress.add_task("starting", total=None)
    noted: set[str] = set()  # each data note once per sweep, not once per run

    def tail() -> str:
        return f" ({left()})" if left else ""

    def started(spec, index, total):
        epochs = f" epoch 0/{spec.epochs}" if kind_of(spec).has_epochs else ""
        progress.update(task, total=total, completed=index, description=spec.label() + epochs + tail())

    def epoch_done(spec, record):
        progress.update(task, description=f"{spec.label()} epoch {record.epoch}/{spec.epochs} "
                                          f"acc {record.test_accuracy:.3f}{tail()}")

    def ended(spec, outcome):
        progress.advance(task)
        for note in (outcome.result.environment.get("data_notes", []) if outcome.result else []):
            if note not in noted:
                noted.add(note)
                progress.console.print(f"note: {spec.dataset}: {note}", markup=False, highlight=False, soft_wrap=True)
        progress.console.print(outcome_line(spec, outcome.status, outcome.result, outcome.error),
                               markup=False, highlight=False, soft_wrap=True)

    def warning(text):
        progress.console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)

    return SweepEvents(started, epoch_done, ended, may_start or (lambda spec: True), warning)


# ExecutorChoice's fields by the flag that sets each, and by the [executor] key (spec/experiment.py).
FLAG_FIELDS = {"executor": "name", "ray_address": "ray_address", "slurm_partition": "slurm_partition",
               "slurm_time": "slurm_time", "slurm_mem": "slurm_mem", "slurm_option": "slurm_options",
               "slurm_folder": "slurm_folder", "detach": "detach"}
TABLE_FIELDS = {"name": "name", "ray_address": "ray_address", "partition": "slurm_partition",
                "time_minutes": "slurm_time", "mem_gb": "slurm_mem", "options": "slurm_options",
                "folder": "slurm_folder", "detach": "detach"}


@dataclass
class ExecutorChoice:
    """Where the runs go: the command line's flags (`given`: the fields they set) over an
    experiment file's [executor] table (with_table); opened by open_executor."""

    name: str = "local"
    ray_address: Optional[str] = None
    slurm_partition: Optional[str] = None
    slurm_time: int = 60
    slurm_mem: Optional[float] = None
    slurm_options: list[str] = field(default_factory=list)  # KEY=VALUE; of one KEY, the last wins
    slurm_folder: Optional[Path] = None
    detach: bool = False
    given: frozenset[str] = frozenset()

    @classmethod
    def from_flags(cls, flags: dict) -> ExecutorChoice:
        """The flags of EXECUTOR_FLAGS as a command received them (None, or an empty list: not given)."""
        given = {FLAG_FIELDS[flag]: value for flag, value in flags.items() if value is not None and value != []}
        return cls(**given, given=frozenset(given))

    def with_table(self, table: dict) -> ExecutorChoice:
        """These flags over an experiment file's [executor] table, key by key: a flag given wins, a
        flag left out takes the file's value (sbatch options merge, a flag's winning for its key).
        The file's keys for another executor than the one chosen are set aside: a file written for
        Slurm can be tried here with --executor local."""
        name = self.name if "name" in self.given else table.get("name", self.name)
        mine = {key: value for key, value in table.items() if EXECUTOR_KEYS[key][1] in (None, name)}
        values = {TABLE_FIELDS[key]: Path(value) if key == "folder" else value for key, value in mine.items()
                  if key != "options" and TABLE_FIELDS[key] not in self.given}
        options = [f"{option}={value}" for option, value in mine.get("options", {}).items()]
        return dataclasses.replace(self, **values, slurm_options=options + self.slurm_options)


# A command's parameter `executor: ExecutorChoice` becomes the options of EXECUTOR_FLAGS.
with_executor_options = with_option_group("executor", EXECUTOR_FLAGS, ExecutorChoice.from_flags)


def open_executor(choice: ExecutorChoice, db: Path):
    """The executor the runs go to: None for local, else opened (connected), or a one-line error."""
    from ..core.errors import SpecError

    if choice.name not in EXECUTORS:
        raise SpecError(f"unknown executor {choice.name!r}; choose one of {', '.join(EXECUTORS)}")
    if choice.ray_address and choice.name != "ray":
        raise SpecError("--ray-address is for --executor ray")
    slurm_flags = choice.slurm_partition or choice.slurm_mem or choice.slurm_options or choice.slurm_folder
    if (slurm_flags or "slurm_time" in choice.given) and choice.name != "slurm":
        raise SpecError("--slurm-* options are for --executor slurm")
    if choice.detach and choice.name != "slurm":
        ends = "Ray tasks end" if choice.name == "ray" else "local runs end"
        raise SpecError(f"--detach is for --executor slurm: {ends} with the sweep that started them")
    if choice.name == "local":
        return None
    if choice.name == "ray":
        from ..runner.ray_executor import RayExecutor

        executor = RayExecutor(choice.ray_address)
    else:
        from ..runner.slurm_executor import SlurmExecutor

        if choice.slurm_time < 1:
            raise SpecError(f"--slurm-time must be at least 1 minute, got {choice.slurm_time}")
        options = {}
        for option in choice.slurm_options:
            key, equals, value = option.partition("=")
            if not equals or not key.strip():
                raise SpecError(f"--slurm-option {option!r}: give KEY=VALUE, e.g. account=proj")
            options[key.strip().lstrip("-").replace("-", "_")] = value
        executor = SlurmExecutor(choice.slurm_partition, choice.slurm_folder or db.resolve().parent / "slurm-jobs",
                                 choice.slurm_time, choice.slurm_mem, options, detach=choice.detach)
    executor.open()
    return executor


@contextlib.contextmanager
def opened_executor(choice: ExecutorChoice, db: Path):
    """open_executor's executor (None for local) for the block, closed after it whatever happens."""
    cluster = open_executor(choice, db)
    try:
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()


def execute(specs, db: Path, data_dir: Optional[Path], experiment: Optional[str], save_weights: bool = False,
            memory_limit: Optional[float] = None, oversubscribe: bool = False, may_start=None, left=None,
            executor: Optional[ExecutorChoice] = None, new_repeat: bool = False):
    """Run the specs with a progress bar; print what was skipped and how the runs ended. Exits 1
    when a run failed (FAILED, or ended by a signal; DIVERGED and OOM are results, not failures).
    `may_start`, `left`: see progress_events. On a cluster executor the runs' CPUs are the nodes'
    (the executor checks them), not this machine's; runs left running on Slurm (--detach) are
    said, with how to collect them, and are no failure. `new_repeat` (batchlab train): each spec
    becomes its next repeat not yet run, so that the same command again stores another."""
    from ..runner import forked_workers

    executor = executor or ExecutorChoice()
    with forked_workers.prestarted(executor.name == "local"):  # local runs fork from it; its imports overlap ours
        return execute_here_or_there(specs, db, data_dir, experiment, save_weights, memory_limit, oversubscribe,
                                     may_start, left, executor, new_repeat)


def execute_here_or_there(specs, db: Path, data_dir: Optional[Path], experiment: Optional[str], save_weights: bool,
                          memory_limit: Optional[float], oversubscribe: bool, may_start, left,
                          executor: ExecutorChoice, new_repeat: bool):
    """execute's work, on this machine or on the executor's cluster."""
    from ..runner.sweep import SweepInterrupted, run_sweep

    limit = preflight(specs, data_dir, memory_limit, oversubscribe, here=executor.name == "local")
    if new_repeat:  # after the checks: opening the store creates it
        specs = next_repeats(specs, db)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with opened_executor(executor, db) as cluster, Progress(*columns, console=err, transient=True) as progress:
            summary = run_sweep(specs, db, str(data_dir) if data_dir else None, experiment,
                                progress_events(progress, may_start, left), save_weights, limit, cluster)
    except SweepInterrupted as stopped:
        done = stopped.summary.count("DONE")
        err.print(f"interrupted: {stopped.spec.label()} stored as KILLED; {done} run(s) finished and stored "
                  f"in {db}. Run the same command again to resume.", highlight=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:  # before any run started: nothing to store
        err.print("interrupted before any run started; nothing stored.", highlight=False)
        raise typer.Exit(130) from None
    for device, reason in summary.skipped_device.items():
        err.print(f"[yellow]skipped runs on {device}:[/yellow] {reason}", highlight=False)
    if summary.skipped_finished:
        err.print(f"{summary.skipped_finished} run(s) already finished in {db}: skipped (resume).")
    if summary.not_started:
        err.print(f"{len(summary.not_started)} run(s) not started: the budget left was shorter than their worst case.",
                  highlight=False)
    if summary.marked_stale:
        err.print(f"{summary.marked_stale} run(s) left RUNNING by a sweep that was killed: stored as STALE "
                  "(run again where planned).", highlight=False)
    if summary.adopted:
        err.print(f"{summary.adopted} run(s) submitted by an earlier sweep: their jobs watched and stored by this "
                  "one, not submitted again.", highlight=False)
    if summary.held_elsewhere:
        err.print(f"[yellow]{len(summary.held_elsewhere)} run(s) skipped: another sweep is running them[/yellow] "
                  f"({escape(summary.held_elsewhere[0])}{', …' if len(summary.held_elsewhere) > 1 else ''}); "
                  "run this command again when it has ended to collect them.", highlight=False, soft_wrap=True)
    failed = [(spec, outcome) for spec, outcome in summary.outcomes if outcome.status in FAILURES]
    not_done = len(summary.outcomes) - summary.count("DONE")
    line = f"{summary.count('DONE')} run(s) done, {not_done} not done"
    results = [f"{summary.count(status)} {word}" for status, word in (("DIVERGED", "diverged"), ("OOM", "out of memory"))
               if summary.count(status)]
    if results:
        line += f" ({', '.join(results)}: a result)"
    err.print(f"{line}, stored in {db}.", highlight=False)
    if summary.detached:
        err.print(f"{len(summary.detached)} run(s) left running on Slurm (jobs {job_list(summary.detached)}): run the "
                  "same command again to collect them.", highlight=False, soft_wrap=True)
    if failed:
        names = "; ".join(f"{spec.label()} ({outcome.status})" for spec, outcome in failed)
        err.print(f"[red]{len(failed)} run(s) failed:[/red] {escape(names)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    return summary


def next_repeats(specs, db: Path) -> list:
    """Each spec as its first repeat neither finished on this machine nor running elsewhere."""
    from ..device.machine import fingerprint, machine_id
    from ..runner.sweep import next_repeat
    from ..store.store import Store

    with Store(db) as store:
        machine = machine_id(fingerprint())
        return [next_repeat(store, spec, machine) for spec in specs]


def job_list(job_ids: list[str], shown: int = 5) -> str:
    """The first job ids, then "…": the line stays short for hundreds of jobs."""
    return ",".join(job_ids[:shown]) + (",…" if len(job_ids) > shown else "")


def preflight(specs, data_dir: Optional[Path], memory_limit: Optional[float], oversubscribe: bool,
              here: bool = True) -> Optional[int]:
    """What must hold before any run starts or anything is stored: the data folder the user named
    holds the data, every registered dataset's files pass their checks (once here, not failing
    each run alike), the memory limit lets a worker start, the runs fit the CPUs. Returns the
    memory limit in bytes."""
    from ..core.heartbeat import timeout_seconds
    from ..data.registry import FOLDER_PREFIX, check_data_dir, verify

    for dataset in sorted({spec.dataset for spec in specs}):  # --data-dir is a promise
        check_data_dir(dataset, data_dir)
        if not dataset.startswith(FOLDER_PREFIX):  # a folder's images are decoded by each run, with notes
            verify(dataset, data_dir)
    timeout_seconds()  # a bad $BATCHLAB_WORKER_TIMEOUT is one line, before anything is stored
    if here:  # on a cluster the nodes' CPUs and GPUs count, which its executor checks
        check_cores(specs, oversubscribe)
        check_gpu_precisions(specs)
    return memory_limit_bytes(memory_limit)


def memory_limit_bytes(memory_limit: Optional[float]) -> Optional[int]:
    """--memory-limit in bytes, refused when no run worker could even start under it."""
    from ..core.errors import SpecError
    from ..runner.sweep import worker_start_bytes

    if memory_limit is None:
        return None
    if memory_limit <= 0:
        raise SpecError(f"--memory-limit is in GiB and must be positive, got {memory_limit}")
    limit, needed = int(memory_limit * 2**30), worker_start_bytes()
    if limit < needed:
        raise SpecError(f"--memory-limit {memory_limit:g} GiB is too low: a run worker needs at least "
                        f"{needed / 2**30:.1f} GiB of address space to start Python and torch on this machine")
    return limit


def check_cores(specs, oversubscribe: bool) -> None:
    """Refuse runs that ask for more processes × threads than this machine's available CPUs:
    their timings would measure contention. --oversubscribe runs them, with a warning."""
    from ..core.cpus import available_cores
    from ..core.errors import SpecError

    cores = available_cores()
    crowded = {spec.key: getattr(spec, "workers", 1) * spec.threads for spec in specs
               if getattr(spec, "workers", 1) * spec.threads > cores}
    if not crowded:
        return
    worst = max(crowded.values())
    what = (f"{len(crowded)} run(s) ask for workers × threads up to {worst} on this machine's {cores} available "
            "CPU(s)")
    if not oversubscribe:
        raise SpecError(f"{what}: their timings would measure contention for cores; add --oversubscribe to run "
                        "them anyway")
    err.print(f"[yellow]warning:[/yellow] {what} (--oversubscribe): their timings include contention for cores.",
              highlight=False)


def check_gpu_precisions(specs) -> None:
    """Refuse tf32 runs on a CUDA GPU here that has no TF32 (older than Ampere), before any run
    starts or is stored (a device missing here is skipped by the sweep, said so)."""
    from ..core.errors import SpecError
    from ..device.fp32_math import cuda_precision_problem
    from ..device.machine import unavailable_reason

    for device in sorted({spec.device for spec in specs if spec.precision == "tf32"}):
        problem = None if unavailable_reason(device) else cuda_precision_problem("tf32", device)
        if problem:
            raise SpecError(problem)


@app.command()
@user_errors
@with_spec_options(RunSpec)
def train(
    save_weights: Annotated[bool, typer.Option(help="Store the trained weights with the run (for infer --weights).")] = False,
    memory_limit: MemoryOpt = None,
    oversubscribe: OversubscribeOpt = False,
    db: DbOpt = Path("batchlab.db"),
    data_dir: DataDirOpt = None,
    **fields,
) -> None:
    """Train once and print one line of results; the run is stored. Running the same command again
    adds another repeat.

    Example: batchlab train --dataset fashion-mnist --model seed-cnn --batch-size 64 --epochs 2
    """
    from ..core.launch import launched_externally
    from ..runner import forked_workers

    spec = RunSpec(**spec_values(RunSpec, fields)).validated()
    external = launched_externally()
    # The run-worker server imports torch beside this process, which imports it next.
    with forked_workers.prestarted(not external):
        train_or_rank(spec, external, save_weights, memory_limit, oversubscribe, db, data_dir)


def train_or_rank(spec: RunSpec, external: bool, save_weights: bool, memory_limit: Optional[float],
                  oversubscribe: bool, db: Path, data_dir: Optional[Path]) -> None:
    """`batchlab train`'s run, in a run worker as every run; or, `external`ly launched, in this process
    as one rank of a torchrun job."""
    from ..data.registry import check_data_dir
    from ..device.machine import resolve_device

    resolve_device(spec.device)  # a missing device is an error here, not a skipped run
    if external:  # one rank of a torchrun job: every rank trains, rank 0 stores
        from ..report.training import run_line
        from ..runner.sweep import record_result, saved_weights
        from ..train.strategies import run

        check_data_dir(spec.dataset, data_dir)
        result = run(spec, str(data_dir) if data_dir else None, keep_weights=save_weights)
        if os.environ["RANK"] == "0":
            record_result(db, result, saved_weights(result))
            out.print(run_line(spec, result.status, result, result.error), markup=False, highlight=False, soft_wrap=True)
        return
    execute([spec], db, data_dir, None, save_weights, memory_limit, oversubscribe, new_repeat=True)


@app.command()
@user_errors
@with_spec_options(RunSpec)
def maxbatch(
    margin: Annotated[float, typer.Option("--margin", help="Safety margin taken off the largest batch that fits.")] = 0.10,
    memory_limit: MemoryOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json (the result on stdout).")] = "table",
    db: DbOpt = Path("batchlab.db"),
    data_dir: DataDirOpt = None,
    **fields,
) -> None:
    """Find the largest batch size whose real training step (data, model, optimizer state) fits
    in memory, by probe runs in their own processes; print it, and it less a safety margin; store it.

    Example: batchlab maxbatch --dataset cifar10 --model torchvision:resnet18 --device cuda
    """
    import dataclasses

    from ..data import registry
    from ..device.machine import fingerprint, machine_id, resolve_device
    from ..runner.maxbatch import default_memory_limit, find_max_batch
    from ..store.store import Store

    if format not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    from ..data.input_path import dataset_bytes

    spec = RunSpec(**spec_values(RunSpec, fields)).validated()
    resolve_device(spec.device)
    dataset = registry.load(spec.dataset, str(data_dir) if data_dir else None, spec.image_size, spec.strict_images)
    images = len(dataset.train_labels) - round(len(dataset.train_labels) * spec.val_split)
    images = min(images, spec.limit_train) if spec.limit_train else images
    data_size = dataset_bytes(dataset)
    del dataset  # not held while the probes run: the RAM they may use is measured after it
    limit = memory_limit_bytes(memory_limit) or default_memory_limit(spec)

    def said(probe) -> None:
        err.print(f"batch {probe.batch_size:>7,}: {'fits' if probe.fits else 'does not fit'} ({probe.status})",
                  highlight=False)

    found = find_max_batch(spec, images, str(data_dir) if data_dir else None, limit, margin, said)
    values = {**dataclasses.asdict(found), "probes": [dataclasses.asdict(p) for p in found.probes]}
    info = fingerprint()
    with Store(db) as store:
        store.record_machine(machine_id(info), info)
        store.record_max_batch(machine_id(info), dataclasses.asdict(spec), values)
    if format == "json":
        sys.stdout.write(json.dumps(values, indent=1) + "\n")
        return
    why = (f"the next batch tried, {found.smallest_failing:,}, ran out of memory" if found.limited_by == "memory"
           else f"every batch up to the training set ({images:,} images) fits")
    out.print(f"largest batch that fits: {found.max_batch:,} ({why}); use {found.usable_batch:,} "
              f"(a {found.margin:.0%} safety margin); {len(found.probes)} probes, stored in {db}. The probes held "
              f"only their batch's images: a run on the device path also holds the dataset, "
              f"{data_size / 2**20:,.0f} MiB", highlight=False)


@app.command()
@user_errors
@with_spec_options(RunSpec, lists=True)
@with_executor_options
def sweep(
    experiment: Annotated[Optional[Path], typer.Argument(help="TOML experiment file (flags override its values).")] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Runs per grid point.")] = None,
    save_weights: Annotated[bool, typer.Option(help="Store every run's trained weights (for infer --weights).")] = False,
    memory_limit: MemoryOpt = None,
    oversubscribe: OversubscribeOpt = False,
    db: DbOpt = Path("batchlab.db"),
    data_dir: DataDirOpt = None,
    executor: ExecutorChoice = ExecutorChoice(),
    **fields,
) -> None:
    """Run a grid of runs, each in a fresh process, every run stored as it finishes. Started
    again, it skips the runs already finished (resume); Ctrl-C stores the running run as KILLED.
    Where the runs go: --executor and its options, else the experiment file's [executor] table.

    Example: batchlab sweep --batch-size 16,64,256,1024 --epochs 3 --repeats 2
    Example: batchlab sweep experiments/small-batches.toml
    """
    from ..core.errors import SpecError
    from ..spec.experiment import ExperimentSpec

    if experiment is not None and experiment.is_dir():
        raise SpecError(f"{experiment} is a folder, not an experiment file (give a .toml file)")
    base = ExperimentSpec.from_toml(experiment) if experiment else ExperimentSpec()
    overrides = flag_grid(RunSpec, fields)
    if experiment is None and not overrides:
        raise SpecError("nothing to sweep: give an experiment file or grid flags, e.g. --batch-size 16,64,256")
    spec = base.with_overrides(overrides, repeats)
    execute(spec.runs() + spec.inferences(), db, data_dir, spec.name, save_weights, memory_limit, oversubscribe,
            executor=executor.with_table(spec.executor))


@app.command()
@user_errors
@with_spec_options(InferSpec, lists=True)
@with_executor_options
def infer(
    memory_limit: MemoryOpt = None,
    oversubscribe: OversubscribeOpt = False,
    db: DbOpt = Path("batchlab.db"),
    data_dir: DataDirOpt = None,
    executor: ExecutorChoice = ExecutorChoice(),
    **fields,
) -> None:
    """Inference throughput and latency against batch size: compute only and with overheads
    (host↔device copies), first-call cost apart; each batch size in its own process.

    Example: batchlab infer --batch-size 1,16,256,4096,40000 --threads 1,0 --precision fp32,bf16
    """
    from ..report.inference import comparison_lines, load_inference, preparation_lines
    from ..spec.experiment import ExperimentSpec
    from ..store.store import Store

    grid = flag_grid(InferSpec, fields)
    dataset, weights = grid["dataset"][0], grid["weights"][0]
    specs = []
    for name in grid["model"]:  # each model with its own weights
        keyed = ""
        if weights:
            with Store(db) as store:  # a fixed run key, so the measurement's key names its weights
                keyed = store.weights(weights, name, dataset)[0]
        specs += ExperimentSpec(infer_grid={**grid, "model": [name], "weights": [keyed]}).inferences()
    try:
        execute(specs, db, data_dir, None, memory_limit=memory_limit, oversubscribe=oversubscribe, executor=executor)
    finally:  # the table of what was measured, failures or not
        if db.exists():
            measured = load_inference(db)
            mine = measured[measured["run_key"].isin({spec.key for spec in specs})].reset_index(drop=True)
            if len(mine):
                from ..report.terminal import inference_table

                screen = console()  # $COLUMNS wide if set, else the terminal's width, else 200
                screen.print(inference_table(mine, screen.width))
                for line in comparison_lines(mine) + preparation_lines(mine):
                    screen.print(line, highlight=False, markup=False)


@app.command()
@user_errors
def report(
    stores: Annotated[Optional[list[Path]], typer.Argument(help="Stores to merge (default: --db), e.g. desktop.db hpc.db.")] = None,
    db: DbOpt = Path("batchlab.db"),
    format: Annotated[str, typer.Option("--format", help="table or json (rows on stdout).")] = "table",
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the rows to this CSV file.")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="One row per run instead of per group of repeats.")] = False,
    tuned_only: Annotated[bool, typer.Option("--tuned", help="Only each configuration's best learning rate "
                                                             "(shown after the table when several were tried).")] = False,
    inference: Annotated[bool, typer.Option("--inference", help="The inference measurements instead of training.")] = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write one self-contained HTML page with the figures.")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Write every figure as a PNG file into this folder.")] = None,
) -> None:
    """Show stored results grouped over repeats: median \\[min–max] of seconds per epoch, images/s,
    accuracy, loss and time to target; inference throughput, latency and crossovers. Several
    stores are merged, machines side by side.

    Example: batchlab report --html report.html
    Example: batchlab report desktop.db hpc.db --png figures/
    """
    from ..report.columns import INFERENCE, RUNS, TRAINING, TUNED, machine_rows
    from ..report.critical_batch import fit_lines
    from ..report.inference import comparison_lines, load_inference, preparation_lines, with_best
    from ..report.noise import noise_lines
    from ..report.precision import precision_lines
    from ..report.run_process import process_lines
    from ..report.terminal import inference_table, runs_table, training_table, tuned_table
    from ..report.training import aggregate, json_rows, load_runs, merged
    from ..report.tuning import tuned

    if format not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    # Paths first: a wrong one is refused before minutes of figure drawing.
    csv, html = (output_file(csv, "--csv") if csv else None), (output_file(html, "--html") if html else None)
    png = output_folder(png, "--png") if png else None
    sources = stores or [db]
    training, measured = merged(sources, load_runs), merged(sources, load_inference)
    if html or png:
        write_figures(sources, training, measured, html, png)
    # CSV and JSON: the table's columns first, in its order (columns.py), then every other field.
    if inference:  # raw per-call timings only with --runs
        rows = measured if runs else machine_rows(INFERENCE, with_best(measured.drop(columns=["compute_seconds",
                                                                                            "overhead_seconds"])))
    elif tuned_only:
        rows = machine_rows(TUNED, tuned(aggregate(training)))
    else:
        rows = machine_rows(RUNS, training) if runs else machine_rows(TRAINING, aggregate(training))
    if csv:
        rows.to_csv(csv, index=False)
    screen = console()  # $COLUMNS wide if set, else the terminal's width, else 200
    if format == "json":
        sys.stdout.write(json.dumps(json_rows(rows), indent=1) + "\n")
    else:
        if not len(training) and not len(measured):
            err.print(f"no runs stored in {', '.join(map(str, sources))} yet: run `batchlab sweep`, `train` or `infer`")
        if tuned_only:
            screen.print(tuned_table(rows, screen.width) if len(rows) else
                         "no configuration was trained at more than one learning rate: nothing to tune")
        elif len(rows) and not inference:  # with --inference, the table below is per measurement already
            screen.print(runs_table(rows, screen.width) if runs else training_table(rows, screen.width))
            for line in ([] if runs else fit_lines(rows)):
                screen.print(line, highlight=False)
            for line in noise_lines(rows):  # the rows marked noisy in the table, with the reasons
                screen.print(line, highlight=False, markup=False)
            best = tuned(rows) if not runs else rows.iloc[0:0]
            if len(best):
                screen.print(tuned_table(best, screen.width))
        if len(measured) and not tuned_only:
            screen.print(inference_table(measured, screen.width))
            for line in comparison_lines(measured) + preparation_lines(measured):
                screen.print(line, highlight=False, markup=False)
        # A bf16 slowdown that is the CPU's, and wall times of fresh and forked run processes side by side: said so.
        for line in precision_lines(training, measured) + process_lines(training):
            screen.print(line, highlight=False, markup=False)


def write_figures(sources: list[Path], training, measured, html: Optional[Path], png: Optional[Path]) -> None:
    from ..report.figures import all_figures
    from ..report.html import page
    from ..report.inference import preparation_lines
    from ..report.precision import precision_lines
    from ..report.run_process import process_lines
    from ..report.training import aggregate, load_epochs, load_evaluations, load_machines, merged

    rows = aggregate(training) if len(training) else training
    figures = all_figures(rows, merged(sources, load_epochs), measured, merged(sources, load_evaluations))
    if png:
        for name, figure in figures.items():
            figure.savefig(png / f"{name}.png", dpi=110)
        err.print(f"{len(figures)} figure(s) written to {png}/")
    if html:
        from ..report.advice import stored_advice

        machines = {k: v for source in sources for k, v in load_machines(source).items()}
        studies = [study for source in sources for study in stored_advice(source)]
        notes = precision_lines(training, measured) + process_lines(training) + preparation_lines(measured)
        html.write_text(page(figures, rows, measured, machines, [str(s) for s in sources], studies, notes))
        err.print(f"report written to {html}")


@app.command()
@user_errors
def export(
    tensorboard: Annotated[Path, typer.Option("--tensorboard", help="Folder for TensorBoard event files, one sub-folder per run.")],
    db: DbOpt = Path("batchlab.db"),
) -> None:
    """Export stored training runs for TensorBoard (scalars per epoch: loss, accuracy, seconds, images/s).

    Example: batchlab export --tensorboard tb/ && tensorboard --logdir tb/
    """
    from ..report.tensorboard import tensorboard as write_tensorboard
    from ..store.store import Store

    output_folder(tensorboard, "--tensorboard")
    with Store(db, readonly=True) as store:
        written = write_tensorboard(store.epochs_frame(), store.runs_frame(), tensorboard)
    err.print(f"{len(written)} run(s) written to {tensorboard}/")


@app.command()
@user_errors
def machine(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """What this machine is: CPU, cores, memory, GPUs, OS, Python, torch and thread settings."""
    from ..device.machine import fingerprint, machine_id

    info = fingerprint()
    info["machine_id"] = machine_id(info)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
        return
    grid = Table(show_header=False, title="this machine")
    for key, value in info.items():
        grid.add_row(key.replace("_", " "), value if isinstance(value, str) else json.dumps(value))
    out.print(grid)


@app.command()
def models() -> None:
    """List the built-in models with their parameter counts (10 classes; their layers follow the
    images' shape, so the count is given for 1x28x28 and 3x32x32)."""
    from ..nn.models import catalogue

    grid = Table("model", "parameters 1x28x28", "parameters 3x32x32", "description")
    for (name, gray, description), (_, colour, _) in zip(catalogue(), catalogue((3, 32, 32))):
        grid.add_row(name, f"{gray:,}", f"{colour:,}", description)
    out.print(grid)
    out.print("Your own: --model package.module:factory (factory(input_shape, classes) → torch.nn.Module); "
              "--model torchvision:NAME for torchvision's classifiers (pip install 'batchlab[vision]').",
              markup=False)


@data_app.command("list")
def data_list(data_dir: DataDirOpt = None) -> None:
    """Registered datasets and where each was found."""
    from ..data.registry import DATASETS, locate

    grid = Table("dataset", "found in", "mirrors")
    for name, info in DATASETS.items():
        where = locate(name, data_dir)
        grid.add_row(name, str(where) if where else "[yellow]not found[/yellow]", ", ".join(info.mirrors))
    out.print(grid)
    out.print("Also: --dataset folder:PATH (one sub-folder of images per class).")


@data_app.command("download")
@user_errors
def data_download(
    name: Annotated[str, typer.Argument(help=REGISTERED_HELP)],
    mirror: Annotated[Optional[list[str]], typer.Option(help="Base URL to try instead of the official mirrors (repeatable).")] = None,
    dest: Annotated[Optional[Path], typer.Option(help="Folder to write to (default: the user cache).")] = None,
) -> None:
    """Download a dataset into the cache (skipped if a valid copy is already found), verified.

    Example: batchlab data download mnist
    Example: batchlab data download cifar10 --mirror http://mirror.example.org/cifar/
    """
    from ..data.download import download
    from ..data.registry import locate, verify

    found = locate(name) if not dest and not mirror else None
    if found is not None:
        verify(name)
        out.print(f"{name}: valid copy already in {found}")
        return
    out.print(f"{name}: downloaded and verified in {download(name, dest, mirror)}")


@data_app.command("verify")
@user_errors
def data_verify(name: Annotated[str, typer.Argument(help=REGISTERED_HELP)], data_dir: DataDirOpt = None) -> None:
    """Check every file of a dataset: IDX files by the SHA-256 of their content and their structure,
    CIFAR archives by the publisher's MD5 and by decoding them."""
    from ..data.registry import verify

    for path, status in verify(name, data_dir):
        out.print(f"{status:<10} {path}", highlight=False)

