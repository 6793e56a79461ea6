"""`batchlab advise`: parses its flags, plans (or finds the stored plan), runs, prints the advice.
The planning is runner/advise.py's, the recommendation report/advice.py's."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..core.errors import SpecError
from ..report.screen import console
from ..spec.run import RunSpec
from .app import (
    DataDirOpt,
    DbOpt,
    ExecutorChoice,
    MemoryOpt,
    OversubscribeOpt,
    app,
    err,
    execute,
    opened_executor,
    preflight,
    user_errors,
    with_executor_options,
)
from .options import flag_grid, with_spec_options

# What advise sets unless the user does: a validation split to choose on (not the test set), the
# LR scaled by the square root of the batch (a grid of 3 covers linear too), the noise scale on.
ADVISE_DEFAULTS = {"val_split": 0.1, "lr_scaling": "sqrt", "gns": True}
# Fields the study sets itself for each run.
PLANNED = ("epochs", "warmup_epochs", "eval_every", "stop_at_target")


def base_spec(fields: dict) -> tuple[RunSpec, list[int] | None, list[float] | None]:
    """The study's common settings from the flags, and the batch sizes and LRs the user listed (a
    list of two or more; one --lr is the middle of the grid, one --batch-size its smallest). Every
    other field takes one value."""
    from ..runner.advise import SMALLEST_BATCH

    grid = flag_grid(RunSpec, fields)
    batches, lrs = grid.pop("batch_size", None), grid.pop("lr", None)
    for name in PLANNED:
        if name in grid:
            raise SpecError(f"advise plans --{name.replace('_', '-')} itself; leave it out")
    several = [name for name, values in grid.items() if len(values) > 1]
    if several:
        raise SpecError(f"advise takes one value of --{several[0].replace('_', '-')} (a list: use `batchlab sweep`)")
    values = {**ADVISE_DEFAULTS, **{name: values[0] for name, values in grid.items()}}
    target = values.get("target_accuracy")
    if not target or not 0 < target <= 1:
        raise SpecError("advise needs --target-accuracy, a fraction in (0, 1], e.g. 0.85")
    if values.get("strategy", "single") != "single":
        raise SpecError("advise plans runs of one process (--strategy single); hogwild and ddp: not yet")
    if batches and min(batches) < 2:
        raise SpecError(f"advise's batch sizes must be at least 2 (--gns and batch norm need two images), got "
                        f"{min(batches)}")
    smallest = min(batches) if batches else SMALLEST_BATCH
    batches = sorted(set(batches)) if batches and len(set(batches)) > 1 else None
    lr = min(lrs) if lrs else values.get("lr", RunSpec.lr)  # the same key whatever order the list is in
    lrs = sorted(set(lrs)) if lrs and len(set(lrs)) > 1 else None
    spec = RunSpec(**{**values, "batch_size": smallest, "lr": lr, "epochs": 2}).validated()
    return spec, batches, lrs


@app.command()
@user_errors
@with_spec_options(RunSpec, lists=True)
@with_executor_options
def advise(
    budget_minutes: Annotated[Optional[float], typer.Option("--budget-minutes", help="Wall minutes the study may take, "
                                                            "probes included (a resumed study: its new runs).")] = None,
    repeats: Annotated[int, typer.Option(help="Runs per (batch size, LR): the spread of time to target.")] = 1,
    max_epochs: Annotated[Optional[int], typer.Option("--max-epochs", help="At most this many epochs per run "
                                                      "(default: as many as the budget allows).")] = None,
    widen: Annotated[bool, typer.Option("--widen/--no-widen", help="Where a batch size's best LR is the lowest or "
                                        "highest tried, try one grid step beyond it (budget permitting).")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when no run reached the target.")] = False,
    format: Annotated[str, typer.Option("--format", help="table or json (the advice on stdout).")] = "table",
    memory_limit: MemoryOpt = None,
    oversubscribe: OversubscribeOpt = False,
    db: DbOpt = Path("batchlab.db"),
    data_dir: DataDirOpt = None,
    executor: ExecutorChoice = ExecutorChoice(),
    **fields,
) -> None:
    """Which batch size and LR reach your target accuracy fastest here: probe the largest batch that
    fits, train powers-of-two batch sizes at 3 LRs each (scaled, with warm-up, runs stopping at the
    target) within the budget, fit the critical batch size, and recommend. Every run is stored; the
    same command again resumes the study. With --executor ray or slurm, "here" is the cluster's
    nodes: the probes run on one of them, the runs as a sweep's.

    Example: batchlab advise --dataset fashion-mnist --model seed-cnn --target-accuracy 0.85 --budget-minutes 15
    """
    from ..device.machine import resolve_device
    from ..runner.advise import Budget, plan_key

    started = time.monotonic()
    if format not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    if budget_minutes is None or budget_minutes <= 0:
        raise SpecError("advise needs --budget-minutes, the wall minutes the study may take, e.g. 15")
    if repeats < 1 or (max_epochs is not None and max_epochs < 1):
        raise SpecError("--repeats and --max-epochs must be at least 1")
    if executor.detach:
        raise SpecError("--detach is not for advise: it plans on its probes' results and advises on its runs', "
                        "so it waits for them")
    base, batches, lrs = base_spec(fields)
    here = executor.name == "local"
    if here:  # on a cluster the nodes' devices and CPUs count, which its executor checks
        resolve_device(base.device)
    limit = preflight([base], data_dir, memory_limit, oversubscribe, here=here)
    # One executor for the whole study, probes and every round of runs: a Ray started here starts
    # once (execute's own opening finds it running, and leaves it so).
    with opened_executor(executor, db) as cluster:
        machine, info = study_machine(cluster)
        key = plan_key(base, budget_minutes, batches, lrs, repeats, max_epochs, machine)
        plan = stored_plan(key, db)
        if plan is None:
            plan = new_plan(base, key, (machine, info), budget_minutes * 60, batches, lrs, max_epochs, repeats,
                            data_dir, limit, started, db, cluster)
        clock = Budget(budget_minutes * 60, started, plan, plan_ahead(plan, machine, db), together=not here)
        failed = run_study(plan, key, clock, widen, db, data_dir, memory_limit, oversubscribe, executor)
    found = show_advice(plan, db, format)
    if failed is not None:
        raise failed
    if strict and not found["reached_target"]:
        err.print(f"[red]--strict:[/red] no run reached the target {plan.target_accuracy:g}", highlight=False)
        raise typer.Exit(1)


def study_machine(cluster) -> tuple[str, dict]:
    """The machine the study's runs are stored under and its record: this one, or on a cluster its
    target, recorded as run_sweep records it (so that the runs are found finished on resume)."""
    from ..device.machine import fingerprint, machine_id

    info = fingerprint()
    if cluster is None:
        return machine_id(info), info
    return cluster.target, {"hostname": cluster.target, "executor": cluster.name, "coordinator": info.get("hostname")}


def stored_plan(key: str, db: Path):
    """The plan stored under `key` (the same command before), said; None if there is none."""
    from ..runner.advise import Plan
    from ..store.store import Store

    with Store(db) as store:
        stored = store.advice_plan(key)
    if not stored:
        return None
    plan = Plan.from_dict(stored)
    err.print(f"resuming the study planned in {db} ({len(plan.runs)} runs: batch sizes "
              f"{', '.join(map(str, plan.batches))} x LRs {', '.join(f'{lr:g}' for lr in plan.lrs)}, "
              f"{plan.epochs} epoch(s) at most)", highlight=False)
    return plan


def plan_ahead(plan, machine: str, db: Path) -> list[RunSpec]:
    """The plan's runs not finished before (a resumed study)."""
    from ..core.records import FINISHED
    from ..store.store import Store

    with Store(db) as store:
        return [spec for spec in plan.specs() if store.status(spec, machine) not in FINISHED]


def run_study(plan, key: str, clock, widen: bool, db: Path, data_dir: Optional[Path], memory_limit, oversubscribe: bool,
              executor: ExecutorChoice) -> Optional[typer.Exit]:
    """The plan's runs, then (with `widen`) rounds of runs beyond the LR grid's edge; returns the
    exit of a round in which a run failed (the advice is still shown), None if none did."""
    from ..runner.advise import WIDEN_ROUNDS

    def time_left() -> str:
        return f"at most {clock.at_most_left() / 60:.1f} min left"

    specs = plan.specs()
    for widening in range(WIDEN_ROUNDS + 1):
        try:
            execute(specs, db, data_dir, f"advise-{key[:8]}", memory_limit=memory_limit,
                    oversubscribe=oversubscribe, may_start=clock.may_start, left=time_left, executor=executor)
        except typer.Exit as stopped:
            if stopped.exit_code != 1:  # interrupted: said, stored; nothing to advise on yet
                raise
            return stopped
        finally:
            clock.round_ended()
        if not widen or widening == WIDEN_ROUNDS:
            break
        specs = widened(plan, key, db, clock)
        if not specs:
            break
        clock.ahead.update({spec.key: spec for spec in specs})
    return None


def new_plan(base: RunSpec, key: str, machine: tuple[str, dict], budget: float, batches, lrs, max_epochs,
             repeats: int, data_dir: Optional[Path], limit, started: float, db: Path, cluster=None):
    """Probe (on a node of `cluster`, if given) and plan, say what was planned, and store the plan
    with its machine (id, record)."""
    from ..runner.advise import make_plan, study_inputs
    from ..store.store import Store

    notes: list[str] = []
    sizes, gns_possible = study_inputs(base, str(data_dir) if data_dir else None)
    if base.gns and not gns_possible:
        base = dataclasses.replace(base, gns=False)
        notes.append(f"--gns off: {base.model} uses batch normalisation, whose per-slice statistics break the "
                     "noise-scale estimate; the critical batch size comes from the steps to target alone")
    for note in notes:
        err.print(f"note: {note}", highlight=False)
    where = "here" if cluster is None else f"on a node of {cluster.target}"
    err.print(f"probing batch sizes from {min(batches) if batches else base.batch_size} for the largest that fits "
              f"and what a step costs {where}", highlight=False)

    def said(probe) -> None:
        err.print(f"  batch {probe.batch_size:>7,}: {'fits' if probe.fits else 'does not fit'}"
                  + (f", {probe.step_seconds * 1000:,.1f} ms a step" if probe.step_seconds else ""), highlight=False)

    scaling = (f"at batch {base.base_batch}, {base.lr_scaling}-scaled to each batch" if base.lr_scaling != "none"
               else "unscaled")
    plan = make_plan(base, key, machine[0], budget, sizes, str(data_dir) if data_dir else None, limit, batches, lrs,
                     max_epochs, repeats, lambda: time.monotonic() - started, said, notes, cluster)
    for note in plan.notes[len(notes):]:  # the plan's own
        err.print(f"note: {note}", highlight=False)
    err.print(f"plan: batch sizes {', '.join(f'{b:,}' for b in plan.batches)} x LRs "
              f"{', '.join(f'{lr:g}' for lr in plan.lrs)} ({scaling}) x "
              f"{repeats} repeat(s), each at most {plan.epochs} epoch(s), stopping at the target "
              f"{base.target_accuracy:g}; {(time.monotonic() - started) / 60:.1f} of {budget / 60:.1f} min spent",
              highlight=False)
    with Store(db) as store:
        store.record_machine(*machine)
        store.record_advice_plan(key, machine[0], dataclasses.asdict(plan))
    return plan


def widened(plan, key: str, db: Path, clock) -> list[RunSpec]:
    """Runs beyond the LR grid's edge where a batch size's best LR sits at it (runner/advise.widen),
    said and stored with the plan; [] when none is needed or none fits the budget left."""
    from ..report.advice import advice_rows, edges
    from ..report.training import load_evaluations, load_runs
    from ..runner.advise import widen
    from ..store.store import Store

    plan_values = json.loads(json.dumps(dataclasses.asdict(plan)))
    at_edge = edges(advice_rows(plan_values, load_runs(db), load_evaluations(db)))
    added = widen(plan, at_edge, clock.left())
    if added:
        with Store(db) as store:
            store.update_advice_plan(key, dataclasses.asdict(plan))
        tried = ", ".join(f"batch {spec.batch_size:,} at lr {spec.lr:g}" for spec in added if spec.repeat == 0)
        err.print(f"the best LR sits at the grid's edge: trying beyond it, {tried}", highlight=False)
    return added


def show_advice(plan, db: Path, format: str) -> dict:
    """Print the advice from the stored runs; return it."""
    from ..report.advice import advice, advice_rows, not_started
    from ..report.terminal import advice_table
    from ..report.training import load_evaluations, load_runs

    runs, evaluations = load_runs(db), load_evaluations(db)
    plan_values = json.loads(json.dumps(dataclasses.asdict(plan)))  # as stored, fresh or resumed
    rows = advice_rows(plan_values, runs, evaluations)
    found = advice(plan_values, rows, not_started(plan_values, runs))
    if format == "json":
        sys.stdout.write(json.dumps(found, indent=1) + "\n")
        return found
    screen = console()
    if len(rows):
        screen.print(advice_table(rows, plan_values, screen.width))
    for line in found["why"]:
        screen.print(escape(line), highlight=False)
    return found
