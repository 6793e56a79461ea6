"""Where each #16 target stands, read from bench/run.py's result files: for every pass and batch
size, batchlab's images/s against the fastest peer, and what 1.5x that peer would take as a share
of the machine's fp32 GEMM rate measured in the same run.

That share is the arithmetic floor of a target. The FLOPs counted are the nominal ones of the
convolutions and linear layers (FLOP_PER_IMAGE below), which every loop doing direct, im2col or
matrix-product convolutions must do, and such fp32 kernels do not run faster than a large matrix
product. So a target that needs more than 100% of the GEMM rate cannot be met that way in fp32 on
that machine (only by doing fewer multiplications, as Winograd or FFT convolutions would); one
that needs a share close to it only if every part of the step runs as efficiently as a large GEMM;
one that needs a smaller share is bounded by fixed costs per operator and per step instead, which
bench/profile_step.py splits up. The GEMM rate is one measurement of a few seconds and moves with
the machine's load (182-210 GFLOP/s between two runs an hour apart on one VM), and so does a
peer's rate: a verdict near 100% can change from run to run.

    python bench/standing.py [RESULT.json ...]    (default: the newest seed-cnn and keras-cnn results)

Not part of the test suite; tests/test_bench_standing.py checks its arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
TARGET = 1.5  # the goal: batchlab at least 1.5x the fastest peer
# Nominal FLOPs per 28×28 image (2 per multiply-add): forward + backward ("train"), and forward
# ("infer"). keras-cnn: conv1 26·26·32·9, conv2 24·24·64·288, dense 9216·128 + 128·10 multiply-adds
# forward; its backward doubles all but conv1's (weight gradient only). Kept here, where reading
# results needs no torch; bench/run.py imports it.
FLOP_PER_IMAGE = {"seed-cnn": {"train": 20.3e6, "infer": 7.0e6}, "keras-cnn": {"train": 71.5e6, "infer": 23.96e6}}
# batchlab's own loops in a result (bench/run.py's "batchlab" and its own variants): not peers.
OWN_VARIANTS = ("batchlab", "batchlab_eager")


@dataclass
class Standing:
    mode: str  # "train" or "infer"
    batch: int
    ours: float  # batchlab's median images/s
    peer: str  # the fastest peer at this size
    peer_rate: float
    ours_share: float  # batchlab's images/s × FLOPs per image ÷ the GEMM rate
    needed_share: float  # the same for 1.5x the fastest peer

    @property
    def ratio(self) -> float:
        return self.ours / self.peer_rate

    @property
    def verdict(self) -> str:
        # As the ratio is printed, to 2 decimals: 1.4996x shows, and counts, as 1.50x.
        if round(self.ratio, 2) >= TARGET:
            return "met"
        if self.needed_share > 1:
            return "above the GEMM rate"
        return "open"


def fastest_peer(rates: dict) -> tuple[str, float] | None:
    """The fastest peer among one batch size's rates (name → {"median": images/s, ...}), batchlab's
    own loops left out; None when no peer ran."""
    peers = {name: rate["median"] for name, rate in rates.items() if name not in OWN_VARIANTS}
    if not peers:
        return None
    name = max(peers, key=peers.get)
    return name, peers[name]


def standings(results: dict) -> list[Standing]:
    """One Standing per pass and batch size of a bench/run.py result."""
    flops, gemm = FLOP_PER_IMAGE[results.get("model", "seed-cnn")], results["gemm_flops"]
    found = []
    for mode in ("train", "infer"):
        for batch, rates in sorted(results.get(mode, {}).items(), key=lambda item: int(item[0])):
            peer = fastest_peer(rates)
            if "batchlab" not in rates or peer is None:
                continue
            (name, rate), ours, ceiling = peer, rates["batchlab"]["median"], gemm / flops[mode]
            found.append(Standing(mode, int(batch), ours, name, rate, ours / ceiling, TARGET * rate / ceiling))
    return found


def table(results: dict) -> str:
    """The standings as a Markdown table, under a line naming the run."""
    lines = [f"{results.get('model', 'seed-cnn')}, {results.get('when', '?')}: fp32 GEMM "
             f"{results['gemm_flops'] / 1e9:,.0f} GFLOP/s",
             "| pass | batch | batchlab img/s | fastest peer | ÷ peer | batchlab, of GEMM | 1.5x needs, of GEMM | target |",
             "|---|---|---|---|---|---|---|---|"]
    for s in standings(results):
        lines.append(f"| {'training' if s.mode == 'train' else 'inference'} | {s.batch:,} | {s.ours:,.0f} | "
                     f"{s.peer} {s.peer_rate:,.0f} | {s.ratio:.2f}x | {s.ours_share:.0%} | {s.needed_share:.0%} | "
                     f"{s.verdict} |")
    return "\n".join(lines)


def is_run_result(results: dict) -> bool:
    """Whether `results` is what bench/run.py writes (not bench/images.py's, which has a `shape`,
    nor run.py --only-bf16's, which has no `train`)."""
    return isinstance(results, dict) and all(key in results for key in ("gemm_flops", "train", "infer")) \
        and "shape" not in results


def newest_results() -> list[Path]:
    """The newest bench/run.py result of each model, by the UTC time each records (`when`), read
    from the files' content: a host name may contain anything a file-name suffix would."""
    newest: dict[str, tuple[str, Path]] = {}
    for path in (HERE / "results").glob("*.json"):
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: `standing.py FILE` names such a file's problem
        if not is_run_result(results):
            continue
        model, when = results.get("model", "seed-cnn"), results.get("when", "")
        if model not in newest or when > newest[model][0]:
            newest[model] = (when, path)
    return [newest[name][1] for name in sorted(newest, key=lambda name: (name != "seed-cnn", name))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path, help="bench/run.py result files")
    paths = parser.parse_args().results or newest_results()
    if not paths:
        sys.exit("no bench/run.py results: run `make bench` first")
    for path in paths:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            sys.exit(f"{path}: cannot be read as JSON ({error})")
        if not is_run_result(results):
            sys.exit(f"{path}: not a bench/run.py result (no gemm_flops, train and infer; bench/images.py's "
                     "and --only-bf16's results have no 1.5x targets)")
        print(f"{path.name}\n{table(results)}\n")


if __name__ == "__main__":
    main()
