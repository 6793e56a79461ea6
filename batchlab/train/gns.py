"""The gradient noise scale, measured while training (--gns).

McCandlish et al. (2018) predict the critical batch size from B_simple = tr(Σ) / |G|², the ratio of
the per-example gradient's total variance to the squared norm of the true gradient. Appendix A gives
unbiased estimates from the squared norms of mean gradients over two batch sizes b < B:
    |G|²  ≈ (B |G_B|² − b |G_b|²) / (B − b)
    tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)
Each step here supplies both: a batch of B images runs through the network in slices of b
(microbatch.py) whose gradients accumulate, so each slice's own mean gradient is the growth of the
accumulated gradient times B/b, and the whole batch's is the accumulated gradient. The two
estimates are averaged over steps with an exponential moving average each, and B_simple is the
ratio of the averages (the ratio of each step's noisy estimates would be biased; the EMAs' start-up
bias is the same factor in both, so it cancels).

The per-step norms stay on the device; they are read and averaged at each evaluation (a sync the
evaluation makes anyway). Slices of another size than the first (microbatch.bounds puts a batch's remainder first, so
those are larger) are left out of |G_b|².
Cost: per slice, one difference and one norm over the parameters (measured in bench/run.py).

Under DDP (RankNoiseScale) the two batch sizes are a rank's own b images and the global batch of
b x ranks: DDP's gradient all-reduce goes through a communication hook that first takes the squared
norm of this rank's gradient (the bucket before averaging), and after the step's backward the
parameters hold the average over all ranks. One rank's |G_b|² is as unbiased an estimate as the
mean over ranks, so only rank 0 (which evaluates) measures, and no extra collective is needed.
"""

from __future__ import annotations

import torch
from torch import nn

EMA_DECAY = 0.98  # about the last 50 steps


class NoiseScale:
    """Slice and batch gradient norms of each step of one model, and B_simple from them."""

    def __init__(self, model: nn.Module, decay: float = EMA_DECAY):
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.decay = decay
        self.previous: list[torch.Tensor] | None = None  # the accumulated gradient before this slice
        self.slice_squares: list[torch.Tensor] = []  # this step's |slice mean gradient|², equal slices only
        self.slice_size = 0
        self.pending: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []  # (|G_b|², |G_B|², b, B) per step
        self.gradient_square = self.trace = 0.0  # the EMAs
        self.steps = 0

    def after_slice(self, start: int, stop: int, count: int) -> None:
        """Call after the backward of slice [start, stop) of a batch of `count` images."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        size = stop - start
        if start == 0:
            self.slice_size, self.slice_squares = size, []
            own = grads
        else:
            own = [g - before for g, before in zip(grads, self.previous)]
        if size == self.slice_size:  # slices of another size do not estimate |G_b|² for this b
            # The slice's loss was its images' summed loss / count: its mean gradient is own × count / size.
            self.slice_squares.append(torch.nn.utils.get_total_norm(own).square() * (count / size) ** 2)
        if stop == count:
            if size < count:  # a whole-batch step has no second batch size to compare with
                whole = torch.nn.utils.get_total_norm(grads).square()
                self.pending.append((torch.stack(self.slice_squares).mean(), whole, self.slice_size, count))
            self.previous = None
        else:
            self.previous = [g.detach().clone() for g in grads]

    def value(self) -> float | None:
        """B_simple from the steps so far (None before any step with two batch sizes, or while the
        gradient estimate is not positive)."""
        if self.pending:
            norms = torch.stack([torch.stack([small, whole]) for small, whole, _, _ in self.pending]).tolist()
            for (small_sq, whole_sq), (_, _, small, whole) in zip(norms, self.pending):
                gradient_square = (whole * whole_sq - small * small_sq) / (whole - small)
                trace = (small_sq - whole_sq) / (1 / small - 1 / whole)
                self.gradient_square = self.decay * self.gradient_square + (1 - self.decay) * gradient_square
                self.trace = self.decay * self.trace + (1 - self.decay) * trace
                self.steps += 1
            self.pending = []
        if self.steps == 0 or self.gradient_square <= 0:
            return None
        return self.trace / self.gradient_square


class RankNoiseScale(NoiseScale):
    """DDP: this rank's mean gradient over its b images against the all-reduced mean over the global
    batch of b x `ranks` (see the module's description). Register `comm_hook` on the DDP model."""

    def __init__(self, model: nn.Module, ranks: int, decay: float = EMA_DECAY):
        super().__init__(model, decay)
        self.ranks = ranks
        self.local_squares: list[torch.Tensor] = []  # this step's buckets, before the all-reduce

    def comm_hook(self, process_group, bucket):
        """DDP's own all-reduce (the mean over ranks), after noting the bucket's squared norm."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks  # DDP runs only

        self.local_squares.append(bucket.buffer().detach().float().square().sum())
        return default_hooks.allreduce_hook(process_group, bucket)

    def after_slice(self, start: int, stop: int, count: int) -> None:
        """Only after the last slice of a step has DDP reduced (the others run under no_sync)."""
        if stop < count:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        whole = torch.nn.utils.get_total_norm(grads).square()
        own = torch.stack(self.local_squares).sum()
        self.local_squares = []
        self.pending.append((own, whole, count, count * self.ranks))
