"""`batchlab advise`: plan and run a short batch-size study within a time budget.

The plan (made once, stored under a key of the user's inputs, so that the same command resumes it):
1. Probes (maxbatch.find_max_batch) from the smallest batch up: the largest batch that fits and,
   from each probe, what a run costs here — one training step at that batch, the evaluation of the
   test set, and the rest of a run (process start, data load, model build, warm-up).
2. Batch sizes: powers of two from the smallest (16) up to the usable max batch, and no larger than
   a sixteenth of the training set (fewer steps per epoch than that leave a run nothing to learn
   from); or the user's --batch-size list.
3. Learning rates: the given --lr (meant at --base-batch) and a third and three times it (or the
   user's --lr list), each scaled to its batch size (--lr-scaling, square root unless given) with a
   warm-up of a fifth of the run, at most half an epoch (Goyal et al. 2017).
4. Epochs: the most that let every run of the plan train all of them, none stopping early, within
   the budget left after the probes (times a safety factor). Runs stop at the end of the epoch in
   which they reach the target (--stop-at-target), so most take far less. A budget that cannot fit
   one epoch of the smallest study (2 batch sizes x 2 LRs) is refused, saying what a run costs here.
5. Evaluations: EVALUATIONS_PER_EPOCH per epoch at every batch size, so time and steps to target are
   resolved to the same share of an epoch whatever the batch; --gns on unless the model has batch
   normalisation (its per-slice statistics break the estimator: engine.gns_slices).

Runs go middle LR first at every batch size (largest batch first: the cheapest), then the other
LRs, so that a budget cut short still leaves one LR at every batch size. Before each run, the budget
left must cover the run's worst case (all epochs); else it is left unstarted and said so (Budget).

On a cluster executor (--executor ray|slurm) the probes run on one node of it (executor.call), so
that what a step costs is the nodes' cost, not the coordinator's; the runs go to it as a sweep's do.

Then, while the budget allows (WIDEN_ROUNDS times at most), a batch size whose best LR sits at an
end of the grid gets a run one grid step (x3) beyond it (`widen`): the best may lie there, and the
advice would otherwise stop at the grid's edge. The grown plan is stored again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from ..core.errors import SpecError
from ..spec.run import RunSpec
from .maxbatch import MaxBatch, Probe, default_memory_limit, find_max_batch
from .remote import needs

SMALLEST_BATCH = 16
MIN_STEPS_PER_EPOCH = 16
LR_FACTORS = (1 / 3, 1.0, 3.0)  # around the given LR, the middle one first
EVALUATIONS_PER_EPOCH = 5
SAFETY = 1.25  # estimated costs are scaled up by this: one probe step is a noisy measurement
SMALLEST_STUDY = (2, 2)  # batch sizes, learning rates: less is no comparison
WIDEN_ROUNDS = 2


@dataclass
class Costs:
    """What a run costs on this machine, from the probes: seconds per step by batch size, seconds
    per evaluated image, and a run's fixed part (process, data, model, warm-up)."""

    step_seconds: dict[int, float]
    eval_seconds_per_image: float
    run_overhead_seconds: float

    def step(self, batch: int) -> float:
        """Seconds per step at `batch`: probed, or the nearest probed batch's per image (a batch given
        between the powers of two probed)."""
        if batch in self.step_seconds:
            return self.step_seconds[batch]
        nearest = min(self.step_seconds, key=lambda probed: abs(math.log(probed / batch)))
        return self.step_seconds[nearest] * batch / nearest

    def epoch_seconds(self, batch: int, train_images: int, val_images: int, test_images: int) -> float:
        """One epoch at `batch`: its steps, the evaluations inside it (the watched split, every
        eval_every steps counted across epochs: at most ceil(steps / every)) and after it (validation
        and test)."""
        steps = math.ceil(train_images / batch)
        watched = val_images or test_images
        inside = math.ceil(steps / eval_every(batch, train_images))
        evaluated = inside * watched + val_images + test_images
        return steps * self.step(batch) + evaluated * self.eval_seconds_per_image

    def run_seconds(self, batch: int, epochs: int, sizes: tuple[int, int, int]) -> float:
        """A run's worst case (all its epochs), safety factor included."""
        return SAFETY * (self.run_overhead_seconds + epochs * self.epoch_seconds(batch, *sizes))


def costs_from(probes: list[Probe], test_images: int) -> Costs:
    fitted = [p for p in probes if p.fits and p.step_seconds is not None]
    if not fitted:
        raise SpecError("advise: no probe trained a step, so nothing to plan with")
    per_image = max(p.eval_seconds for p in fitted) / max(1, test_images)
    overhead = max(0.0, sorted(p.elapsed_seconds - p.step_seconds - p.eval_seconds for p in fitted)[len(fitted) // 2])
    return Costs({p.batch_size: p.step_seconds for p in fitted}, per_image, overhead)


def ladder(smallest: int, largest: int) -> list[int]:
    """Powers of two from `smallest` up to `largest` (`smallest` itself if it is the only one)."""
    batches, batch = [], smallest
    while batch <= largest:
        batches.append(batch)
        batch *= 2
    return batches or [smallest]


def learning_rates(lr: float) -> list[float]:
    """The middle LR first (it runs first), then the lower and the higher."""
    middle, low, high = (float(f"{lr * factor:.3g}") for factor in (LR_FACTORS[1], LR_FACTORS[0], LR_FACTORS[2]))
    return [middle, low, high]


def middle_first(lrs: list[float]) -> list[float]:
    """A given LR grid in run order: its middle LR first (as learning_rates), then the others ascending;
    a budget too short for all drops the last, the highest."""
    ordered = sorted(set(lrs))
    middle = ordered[(len(ordered) - 1) // 2]
    return [middle] + [lr for lr in ordered if lr != middle]


def warmup_for(epochs: int) -> float:
    return min(0.5, epochs / 5)


def eval_every(batch: int, train_images: int) -> int:
    """Steps between evaluations: at most EVALUATIONS_PER_EPOCH an epoch, its own end included."""
    steps = math.ceil(train_images / batch)
    return max(1, math.ceil(steps / EVALUATIONS_PER_EPOCH))


def affordable_epochs(batches: list[int], lrs: int, seconds: float, costs: Costs, sizes: tuple[int, int, int],
                      repeats: int = 1) -> int:
    """The most epochs each of the runs may have, all running them all, within `seconds`."""
    fixed = SAFETY * costs.run_overhead_seconds * len(batches) * lrs * repeats
    per_epoch = SAFETY * lrs * repeats * sum(costs.epoch_seconds(batch, *sizes) for batch in batches)
    return max(0, math.floor((seconds - fixed) / per_epoch))


def fit_study(batches: list[int], lrs: list[float], seconds: float, costs: Costs, sizes: tuple[int, int, int],
              max_epochs: int | None, repeats: int = 1) -> tuple[list[int], list[float], int]:
    """Trim the study until its runs get at least one epoch each: first the smallest batch sizes
    (the dearest per epoch) down to SMALLEST_STUDY[0], then the highest LRs down to
    SMALLEST_STUDY[1]. SpecError when even the smallest study does not fit."""
    batches, lrs = list(batches), list(lrs)
    while True:
        epochs = affordable_epochs(batches, len(lrs), seconds, costs, sizes, repeats)
        if epochs >= 1:
            return batches, lrs, min(epochs, max_epochs) if max_epochs else epochs
        if len(batches) > SMALLEST_STUDY[0]:
            batches.pop(0)
        elif len(lrs) > SMALLEST_STUDY[1]:
            lrs.pop()
        else:
            one = min(costs.run_seconds(batch, 1, sizes) for batch in batches)
            least = len(lrs) * repeats * sum(costs.run_seconds(batch, 1, sizes) for batch in batches)
            raise SpecError(f"the budget left ({seconds / 60:.1f} min after the probes) is too small: one run of one "
                            f"epoch takes about {one:.0f} s here (a {SAFETY - 1:.0%} margin included), and the "
                            f"smallest study ({len(batches)} batch sizes x {len(lrs)} learning rates x {repeats} "
                            f"repeat(s)) about {least / 60:.1f} min; give a larger --budget-minutes, or fewer "
                            "training images (--limit-train)")


@dataclass
class Plan:
    """A study, as stored: its key, the runs (RunSpec dicts, in run order) and what it was made from."""

    key: str
    machine_id: str
    runs: list[dict]
    run_keys: list[str]
    batches: list[int]
    lrs: list[float]
    epochs: int
    repeats: int
    target_accuracy: float
    budget_minutes: float
    max_batch: dict  # maxbatch.MaxBatch as a dict (probes included)
    costs: dict  # Costs as a dict
    sizes: tuple[int, int, int]  # training, validation and test images
    notes: list[str] = field(default_factory=list)  # what the plan decided that the user should know
    search_bound: str = "a sixteenth of the training set"  # why the max-batch search stopped where it did

    def specs(self) -> list[RunSpec]:
        return [RunSpec.from_dict(values) for values in self.runs]

    def worst_case_seconds(self, spec: RunSpec) -> float:
        steps = {int(batch): seconds for batch, seconds in self.costs["step_seconds"].items()}  # JSON keys: text
        return Costs(**{**self.costs, "step_seconds": steps}).run_seconds(spec.batch_size, spec.epochs,
                                                                           tuple(self.sizes))

    @classmethod
    def from_dict(cls, values: dict) -> Plan:
        """A stored plan; its run keys recomputed from its runs (a key is a hash of the spec as this
        version has it, and the sweep looks runs up by it)."""
        known = {f.name for f in dataclasses.fields(cls)}
        plan = cls(**{key: value for key, value in values.items() if key in known})
        plan.run_keys = [spec.key for spec in plan.specs()]
        return plan


def plan_key(base: RunSpec, budget_minutes: float, batches: list[int] | None, lrs: list[float] | None,
             repeats: int, max_epochs: int | None, machine: str) -> str:
    """The inputs a plan is made from: the same command on the same machine finds its plan again."""
    payload = json.dumps({"spec": base.identity(), "budget": budget_minutes, "batches": batches, "lrs": lrs,
                          "repeats": repeats, "max_epochs": max_epochs, "machine": machine}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def make_plan(base: RunSpec, key: str, machine: str, budget_seconds: float, sizes: tuple[int, int, int],
              data_dir: str | None, memory_limit: int | None, batches: list[int] | None, lrs: list[float] | None,
              max_epochs: int | None, repeats: int, elapsed: Callable[[], float],
              on_probe: Callable[[Probe], None], notes: list[str], executor=None) -> Plan:
    """Probe (here, or on a node of `executor`), then fit the study into the budget left (see the
    module's description). `memory_limit` None: the RAM available where the probes run."""
    train_images, val_images, test_images = sizes
    smallest = min(batches) if batches else SMALLEST_BATCH
    top = max(batches) if batches else max(smallest, train_images // MIN_STEPS_PER_EPOCH)
    bound = "the largest --batch-size given" if batches else "a sixteenth of the training set"
    found = probe(base, top, data_dir, memory_limit, min(smallest, top), budget_seconds, elapsed, on_probe, executor)
    costs = costs_from(found.probes, test_images)
    # The margin is for a batch at the edge of memory; a search that stopped at its bound has none.
    usable = found.usable_batch if found.limited_by == "memory" else found.max_batch
    fitting = ([b for b in batches if b <= usable] if batches else ladder(smallest, min(usable, top)))
    if not fitting:
        raise SpecError(f"none of the batch sizes given fits: the largest that does is {found.max_batch}")
    chosen, grid, epochs = fit_study(fitting, middle_first(lrs) if lrs else learning_rates(base.lr),
                                     budget_seconds - elapsed(), costs,
                                     sizes, max_epochs, repeats)
    notes = list(notes)  # the caller's, then this plan's own
    if len(chosen) < len(fitting) or len(grid) < len(lrs or LR_FACTORS):
        notes.append(f"the budget fits {len(chosen)} batch size(s) x {len(grid)} learning rate(s) of "
                     f"{len(fitting)} x {len(lrs or LR_FACTORS)}: the smallest batches (and highest LRs) were left out")
    runs = [dataclasses.asdict(dataclasses.replace(
                base, batch_size=batch, lr=lr, epochs=epochs, warmup_epochs=warmup_for(epochs),
                eval_every=eval_every(batch, train_images), stop_at_target=True, repeat=repeat,
                seed=base.seed + repeat).validated())
            for repeat in range(repeats) for lr in grid for batch in sorted(chosen, reverse=True)]
    return Plan(key, machine, runs, [RunSpec.from_dict(values).key for values in runs], chosen, grid, epochs, repeats,
                base.target_accuracy, budget_seconds / 60, dataclasses.asdict(found), dataclasses.asdict(costs), sizes,
                notes, bound)


def probe(base: RunSpec, top: int, data_dir: str | None, memory_limit: int | None, start: int, budget_seconds: float,
          elapsed: Callable[[], float], on_probe: Callable[[Probe], None], executor=None) -> MaxBatch:
    """The max-batch search (search_max_batch) here, each probe said as it ends; or on one node of a
    cluster executor, its probes said when it returns (a callback cannot cross to the node).
    SpecError when the budget ran out while probing: on the node's clock during the search, or on
    this one's after it (a cluster's queue wait counts here)."""
    seconds_left = budget_seconds - elapsed()
    if executor is None:
        found, probes = search_max_batch(base, top, data_dir, memory_limit, start, seconds_left, on_probe)
    else:
        executor.check([base])  # a node that can hold the runs: one line now, not a task queued forever
        wanted = needs(base)  # a probe is a run of the study's threads and device
        found, probes = executor.call(search_max_batch, base, top, data_dir, memory_limit, start, seconds_left,
                                      cpus=wanted["CPU"], gpus=wanted["GPU"])
        for done in probes:
            on_probe(done)
    if found is None or elapsed() > budget_seconds:
        raise SpecError(f"the budget ({budget_seconds:.0f} s) ran out while probing batch sizes "
                        f"(the last probe, batch {probes[-1].batch_size}, took {probes[-1].elapsed_seconds:.0f} s); "
                        "give a larger --budget-minutes")
    return found


class BudgetSpent(Exception):
    """Raised from a probe's callback to end the search: the budget is spent."""


def search_max_batch(base: RunSpec, top: int, data_dir: str | None, memory_limit: int | None, start: int,
                     seconds_left: float, on_probe: Callable[[Probe], None] = lambda probe: None
                     ) -> tuple[MaxBatch | None, list[Probe]]:
    """find_max_batch from batch `start` up to `top`, on the machine this runs on: here, or a node
    (through executor.call; hence module-level, its arguments and value picklable). It returns
    early, (None, the probes made), once a probe ends more than `seconds_left` seconds after this
    call began, on this machine's own clock (a queue wait before it is the caller's to count); else
    (the search's result, its probes). `memory_limit` None: the RAM available on this machine."""
    began = time.monotonic()
    probes: list[Probe] = []

    def probed(done: Probe) -> None:
        probes.append(done)
        on_probe(done)
        if time.monotonic() - began > seconds_left:
            raise BudgetSpent

    try:
        found = find_max_batch(base, top, data_dir, memory_limit or default_memory_limit(base), on_probe=probed,
                               start=start)
    except BudgetSpent:
        return None, probes
    return found, probes


def widen(plan: Plan, edges: dict[int, tuple[float, str]], seconds: float) -> list[RunSpec]:
    """Runs one grid step (x3) beyond the best LR of each batch size whose best sits at an end of
    the grid (`edges`, in priority order), as many as their worst cases fit in `seconds`; added to
    the plan (which the caller stores again)."""
    step = LR_FACTORS[2]
    templates = {(spec.batch_size, spec.lr, spec.repeat): spec for spec in plan.specs()}
    added: list[RunSpec] = []
    for batch, (lr, side) in edges.items():
        beyond = float(f"{lr * step if side == 'highest' else lr / step:.3g}")
        runs = [dataclasses.replace(templates[(batch, lr, repeat)], lr=beyond) for repeat in range(plan.repeats)
                if (batch, lr, repeat) in templates]
        runs = [spec for spec in runs if spec.key not in plan.run_keys]
        cost = sum(plan.worst_case_seconds(spec) for spec in runs)
        if not runs or cost > seconds:
            continue
        seconds -= cost
        added += runs
    plan.runs += [dataclasses.asdict(spec) for spec in added]
    plan.run_keys += [spec.key for spec in added]
    return added


def study_inputs(base: RunSpec, data_dir: str | None) -> tuple[tuple[int, int, int], bool]:
    """(training, validation, test images) of the runs, and whether --gns can measure this model
    (not with batch normalisation: engine.gns_slices)."""
    from ..data import registry
    from ..nn import microbatch, models

    dataset = registry.load(base.dataset, data_dir, base.image_size, base.strict_images)
    total = len(dataset.train_labels)
    val = round(total * base.val_split)
    train = min(total - val, base.limit_train) if base.limit_train else total - val
    model = models.build(base.model, input_shape=dataset.input_shape, classes=dataset.classes)
    return (train, val, len(dataset.test_labels)), not microbatch.has_batch_statistics(model)


class Budget:
    """The study's clock while its runs go: which run may start (its worst case within the budget
    left), and at most how long the rest takes (the worst cases of the runs ahead, within the budget).

    Here runs go one after another, and may_start is asked as each starts, the one before ended.
    On a cluster (`together`) it is asked as each is submitted, all within seconds, and they then
    run side by side as nodes allow, or one after another on a full cluster: a run may start there
    only if its worst case fits the budget left after the worst cases of the runs submitted before
    it (those of this round, see round_ended). This still holds the study to its budget if the
    runs find no room to go side by side, and is the same test as here for the plan's first round
    (the plan's epochs fit every run one after another). A queue's wait is not foreseen.
    """

    def __init__(self, seconds: float, started: float, plan: Plan, ahead: list[RunSpec],
                 clock: Callable[[], float] = time.monotonic, together: bool = False):
        self.seconds, self.started, self.plan, self.clock = seconds, started, plan, clock
        self.ahead = {spec.key: spec for spec in ahead}
        self.together = together
        self.started_runs: list[tuple[RunSpec, float]] = []  # here: the run going; on a cluster: this round's

    def left(self) -> float:
        return self.seconds - (self.clock() - self.started)

    def may_start(self, spec: RunSpec) -> bool:
        self.ahead.pop(spec.key, None)
        if not self.together:  # the run before has ended
            self.started_runs = []
        if self.plan.worst_case_seconds(spec) + self.still_to_come() > self.left():
            return False
        self.started_runs.append((spec, self.clock()))
        return True

    def still_to_come(self) -> float:
        """The worst cases of the runs started, less the time they have run."""
        now = self.clock()
        return sum(max(0.0, self.plan.worst_case_seconds(spec) - (now - began)) for spec, began in self.started_runs)

    def round_ended(self) -> None:
        """Every run started has ended (a round of execute): none is still to come."""
        self.started_runs = []

    def at_most_left(self) -> float:
        rest = sum(self.plan.worst_case_seconds(spec) for spec in self.ahead.values()) + self.still_to_come()
        return max(0.0, min(self.left(), rest))
