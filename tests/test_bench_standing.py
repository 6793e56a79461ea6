"""bench/standing.py's arithmetic, which the floors in docs/performance.md are read from: the fastest
peer, batchlab's ratio to it, and what 1.5x would take of the GEMM rate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import standing  # noqa: E402


def rates(**medians: float) -> dict:
    return {name: {"median": value, "min": value, "max": value, "n": 1} for name, value in medians.items()}


# A GEMM rate at which seed-cnn's ceiling is round: 20.3 MFLOP per trained image → 10,000 img/s,
# 7 MFLOP per inferred image → 29,000 img/s.
RESULT = {
    "model": "seed-cnn", "when": "2026-12-02T00:00:00+00:00", "gemm_flops": 203e9,
    "train": {"1": rates(batchlab=600, plain_torch=500, plain_torch_channels_last=400),
              "4096": rates(batchlab=6000, plain_torch=3000, keras=7000)},
    # batchlab's eager pass is faster than every peer here, but it is batchlab's own: not a peer.
    "infer": {"256": rates(batchlab=20000, batchlab_eager=30000, plain_torch=13000, keras=12000)},
}


def test_the_fastest_peer_and_what_the_target_takes():
    found = {(s.mode, s.batch): s for s in standing.standings(RESULT)}
    one = found[("train", 1)]
    assert (one.peer, one.peer_rate) == ("plain_torch", 500)
    assert one.ratio == pytest.approx(1.2)
    assert one.ours_share == pytest.approx(0.06)
    assert one.needed_share == pytest.approx(0.075)  # 1.5 × 500 of a 10,000 img/s ceiling
    assert one.verdict == "open"
    large = found[("train", 4096)]
    assert large.peer == "keras"
    assert large.needed_share == pytest.approx(1.05)  # 10,500 img/s: more than the GEMM rate allows
    assert large.verdict == "above the GEMM rate"
    inference = found[("infer", 256)]
    assert (inference.peer, inference.peer_rate) == ("plain_torch", 13000)
    assert inference.ratio == pytest.approx(20000 / 13000)
    assert inference.verdict == "met"


def test_a_ratio_is_judged_as_it_is_printed():
    """1.4996x prints as 1.50x, and a table that showed 1.50x beside "open" would contradict itself."""
    result = {**RESULT, "train": {"64": rates(batchlab=1499.6, plain_torch=1000)}, "infer": {}}
    (only,) = standing.standings(result)
    assert f"{only.ratio:.2f}" == "1.50"
    assert only.verdict == "met"
    result["train"]["64"] = rates(batchlab=1494, plain_torch=1000)
    assert standing.standings(result)[0].verdict == "open"


def test_batch_sizes_come_in_numeric_order_and_a_size_without_peers_is_left_out():
    result = {**RESULT, "train": {"16": rates(batchlab=1, plain_torch=1), "4": rates(batchlab=1, plain_torch=1),
                                  "256": rates(batchlab=1)}, "infer": {}}
    assert [s.batch for s in standing.standings(result)] == [4, 16]


def test_keras_cnn_results_use_keras_cnn_flops():
    result = {**RESULT, "model": "keras-cnn", "gemm_flops": 71.5e9, "infer": {}}
    found = standing.standings(result)
    assert found[0].ours_share == pytest.approx(600 / 1000)  # 71.5 MFLOP per image: a 1,000 img/s ceiling


def test_the_newest_result_of_each_model_is_found_by_content(tmp_path, monkeypatch):
    """Host names may contain what a file-name suffix would ("-images", "-keras-cnn"): the files are
    told apart by what they hold, and the newest by the UTC time each records."""
    results = tmp_path / "results"
    results.mkdir()

    def write(name: str, content) -> None:
        (results / name).write_text(content if isinstance(content, str) else json.dumps(content))

    write("20261202-1000-ci-images-01.json", {**RESULT, "when": "2026-12-02T10:00:00+00:00"})
    write("20261202-0900-ci-images-01.json", {**RESULT, "when": "2026-12-02T09:00:00+00:00"})
    write("20261202-1100-box-keras-cnn.json", {**RESULT, "when": "2026-12-02T11:00:00+00:00"})  # seed-cnn inside
    old_keras = {key: value for key, value in RESULT.items() if key != "model"} | {"model": "keras-cnn"}
    write("20261201-0900-vm-keras-cnn.json", old_keras)
    write("20261203-0900-vm-images.json", {"shape": [3, 32, 32], "train": {}, "infer": {}, "gemm_flops": 1})
    write("20261203-0900-vm-bf16.json", {"machine": {}, "bf16": {}})
    write("20261203-1000-vm.json", "{ cut off")
    write("20261130-0900-vm.json", {key: value for key, value in RESULT.items() if key not in ("model", "when")})
    monkeypatch.setattr(standing, "HERE", tmp_path)
    assert [p.name for p in standing.newest_results()] == ["20261202-1100-box-keras-cnn.json",
                                                           "20261201-0900-vm-keras-cnn.json"]


def test_a_file_that_is_not_a_run_result_is_one_line_refused(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"shape": [3, 32, 32], "train": {}, "infer": {}, "gemm_flops": 1}))
    monkeypatch.setattr(sys, "argv", ["standing.py", str(images)])
    with pytest.raises(SystemExit, match="not a bench/run.py result"):
        standing.main()
    broken = tmp_path / "broken.json"
    broken.write_text("{ cut off")
    monkeypatch.setattr(sys, "argv", ["standing.py", str(broken)])
    with pytest.raises(SystemExit, match="cannot be read as JSON"):
        standing.main()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(RESULT))
    monkeypatch.setattr(sys, "argv", ["standing.py", str(good)])
    standing.main()
    assert "| training | 4,096 | 6,000 | keras 7,000 | 0.86x | 60% | 105% | above the GEMM rate |" in capsys.readouterr().out


def test_results_held_in_memory_with_integer_batch_sizes():
    """bench/run.py prints the table from its own dict, whose batch sizes are ints, not JSON's strings."""
    in_memory = {**RESULT, "train": {4096: RESULT["train"]["4096"], 1: RESULT["train"]["1"]}, "infer": {}}
    assert [s.batch for s in standing.standings(in_memory)] == [1, 4096]
