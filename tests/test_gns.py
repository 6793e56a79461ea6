"""The gradient noise scale (--gns) against a problem whose answer is known in closed form."""

import pytest
import torch
from torch import nn

from batchlab.train.gns import NoiseScale


def test_recovers_b_simple_of_linear_regression_with_gaussian_noise():
    # y = w*·x + ε, x ~ N(0, I_d), ε ~ N(0, σ²); squared loss at fixed weights w = w* + δ. Per-example
    # gradient g = 2 r x with r = δ·x − ε, so G = E[g] = 2δ and, by Isserlis' theorem,
    # E[g gᵀ] = 4 ((|δ|² + σ²) I + 2 δδᵀ): tr(Σ) = 4 ((d + 1) |δ|² + d σ²), |G|² = 4 |δ|².
    torch.manual_seed(0)
    d, sigma = 20, 2.0
    w_star = torch.randn(d)
    delta = torch.randn(d) * 0.3
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + delta).view(1, d))
    expected = ((d + 1) * delta.square().sum() + d * sigma ** 2) / delta.square().sum()
    noise = NoiseScale(model)
    batch, slice_size = 256, 32
    for _ in range(3000):  # fixed weights: every step samples the same gradient distribution
        x = torch.randn(batch, d)
        y = x @ w_star + sigma * torch.randn(batch)
        model.zero_grad(set_to_none=True)
        for start in range(0, batch, slice_size):  # as train_step runs a batch: slices, loss summed / batch
            stop = start + slice_size
            loss = (model(x[start:stop]).squeeze(1) - y[start:stop]).square().sum() / batch
            loss.backward()
            noise.after_slice(start, stop, batch)
    assert noise.value() == pytest.approx(float(expected), rel=0.15)


def test_a_whole_batch_step_gives_no_estimate():
    model = nn.Linear(3, 1)
    noise = NoiseScale(model)
    model(torch.randn(8, 3)).sum().backward()
    noise.after_slice(0, 8, 8)
    assert noise.value() is None


def test_a_run_with_gns_records_b_simple_at_every_evaluation(synthetic_dataset):
    import batchlab
    from batchlab import RunSpec

    result = batchlab.run(RunSpec(dataset=synthetic_dataset.name, model="mlp", batch_size=64, epochs=2,
                                  limit_train=1280, threads=1, eval_every=5, gns=True),
                          data_dir=str(synthetic_dataset.directory))
    values = [e.gradient_noise_scale for e in result.evaluations]
    assert len(values) == 8 and all(v is not None and v > 0 for v in values)  # 20 steps an epoch: 5, 10, 15, 20, ...
    assert result.gradient_noise_scale == values[-1]
    assert 0 < result.environment["gns_slice"] < 64


@pytest.mark.parametrize("fields, message", [
    ({"gns": True, "strategy": "hogwild", "workers": 2}, "--gns is measured with --strategy single or ddp"),
    ({"gns": True, "batch_size": 1}, "use a batch size of at least 2"),
])
def test_gns_refuses_what_it_cannot_measure(fields, message):
    from batchlab import RunSpec
    from batchlab.core.errors import SpecError

    with pytest.raises(SpecError, match=message):
        RunSpec(**fields).validated()


def test_gns_refuses_batch_norm_models(synthetic_dataset, tmp_path):
    import batchlab
    from batchlab import RunSpec
    from batchlab.core.errors import ModelError

    model_file = tmp_path / "gns_batch_norm.py"
    model_file.write_text("from torch import nn\n"
                          "def factory(input_shape, classes):\n"
                          "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.BatchNorm1d(8), nn.ReLU(),\n"
                          "                         nn.Linear(8, classes))\n")
    with pytest.raises(ModelError, match="--gns: model .* uses batch normalisation"):
        batchlab.run(RunSpec(dataset=synthetic_dataset.name, model=f"{model_file}:factory", batch_size=32, gns=True,
                             limit_train=256), data_dir=str(synthetic_dataset.directory))


def test_report_rows_carry_b_simple_and_the_html_draws_it(synthetic_folder, tmp_path):
    import json

    from typer.testing import CliRunner

    from batchlab.cli.app import app

    db, page = tmp_path / "g.db", tmp_path / "g.html"
    ran = CliRunner().invoke(app, ["sweep", "--dataset", f"folder:{synthetic_folder}", "--model", "mlp",
                                   "--batch-size", "32,64", "--epochs", "1", "--limit-train", "640", "--gns",
                                   "--eval-every", "5", "--db", str(db)])
    assert ran.exit_code == 0, ran.output
    rows = json.loads(CliRunner().invoke(app, ["report", "--db", str(db), "--format", "json"]).stdout)
    assert len(rows) == 2 and all(row["gradient_noise_scale"] > 0 for row in rows)
    assert CliRunner().invoke(app, ["report", "--db", str(db), "--html", str(page)]).exit_code == 0
    assert '<figure id="noise_scale">' in page.read_text()


def test_ddp_recovers_b_simple_from_the_ranks_gradients_against_the_all_reduced_one():
    import torch.multiprocessing as mp
    from ddp_gns_helpers import linear_regression_rank
    from torch.multiprocessing import ProcessExitedException

    from batchlab.train.ddp import free_port

    def measure():
        context = mp.get_context("spawn")
        results = context.Queue()
        ranks = mp.start_processes(linear_regression_rank, args=(2, free_port(), 20, 2.0, 16, 3000, results),
                                   nprocs=2, join=False, start_method="spawn")
        while not ranks.join(timeout=1):  # raises if a rank dies
            pass
        return results.get(timeout=10)

    try:
        measured, expected = measure()
    except ProcessExitedException as died:
        # Seen about once in 50 runs on a loaded 2-core machine: a gloo rank aborts inside torch
        # ("terminate called without an active exception") mid-run. That is not what this test is
        # about, so it gets one more try; a second abort, or any other failure, still fails it.
        if died.signal_name != "SIGABRT":
            raise
        measured, expected = measure()
    assert measured == pytest.approx(expected, rel=0.15)


def test_a_ddp_run_with_gns_records_b_simple(synthetic_folder):
    import batchlab
    from batchlab import RunSpec

    result = batchlab.run(RunSpec(dataset=f"folder:{synthetic_folder}", model="mlp", batch_size=32, epochs=1,
                                  limit_train=640, strategy="ddp", workers=2, threads=1, eval_every=5, gns=True))
    values = [e.gradient_noise_scale for e in result.evaluations]
    assert len(values) == 2 and all(v is not None for v in values)  # 10 global steps: after 5, then the epoch's end
    assert result.environment["gns_method"] == "ranks"
