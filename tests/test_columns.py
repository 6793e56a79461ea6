"""The report's tables: one column spec per table, rendered alike in the terminal, the HTML page,
CSV and JSON; the terminal table fits $COLUMNS and names what it left out; the HTML tables fit a
1200 px wide page. On a store written directly (no training) whose runs differ in many settings:
two machines (one with a long host name), three strategies at 1 and 2 workers, two precisions,
with and without a validation split, a target accuracy, an OOM group, and inference at two thread
counts and precisions."""

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from batchlab.core.records import EpochRecord, InferResult, RunResult
from batchlab.spec.run import InferSpec, RunSpec
from batchlab.store.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The columns the fixture store's tables have (settings the same in every row, e.g. threads, are
# not columns; accuracy is not, as no inference ran with trained weights).
TRAINING_LABELS = ["dataset", "shape", "model", "device", "strategy", "workers", "precision", "val split", "machine",
                   "batch size", "epochs", "n", "status", "s / epoch", "images / s", "speedup", "efficiency",
                   "val acc", "test acc", "test loss", "time to target s"]
INFERENCE_LABELS = ["dataset", "shape", "model", "device", "threads", "precision", "weights", "machine", "batch", "status", "n",
                    "images / s", "p50 ms", "p90 ms", "p99 ms", "images / s w/ overheads", "p50 ms w/ overheads",
                    "first call ms"]


def fill(db: Path) -> None:
    with Store(db) as store:
        for machine, host in (("m1", "workstation-01.example.org"), ("m2", "hpc-node-17")):
            store.record_machine(machine, {"hostname": host})
            speed = 1.0 if machine == "m1" else 2.5
            for strategy, workers in (("single", 1), ("ddp", 1), ("ddp", 2), ("hogwild", 2)):
                for precision in ("fp32", "bf16"):
                    for batch in (16, 256, 4096):
                        for repeat in (0, 1):
                            spec = RunSpec(model="seed-cnn", batch_size=batch, epochs=3, strategy=strategy,
                                           workers=workers, threads=2, precision=precision,
                                           val_split=0.0 if strategy == "hogwild" else 0.1, target_accuracy=0.85,
                                           repeat=repeat, seed=repeat)
                            seconds = (12.345 + batch / 1000) / speed / workers * (1 + 0.1 * repeat)
                            validated = strategy != "hogwild"
                            epochs = [EpochRecord(epoch=e, train_loss=1 / e, train_accuracy=0.5 + e / 10,
                                                  val_loss=0.6 / e if validated else None,
                                                  val_accuracy=0.8 + e / 30 - repeat / 100 if validated else None,
                                                  test_loss=0.55 / e, test_accuracy=0.79 + e / 31 + repeat / 100,
                                                  train_seconds=seconds, eval_seconds=0.3, images=54000,
                                                  steps=54000 // batch) for e in (1, 2, 3)]
                            reached = 2 * seconds if repeat == 0 or batch < 4096 else None
                            store.finish(store.start(spec, machine), RunResult(
                                spec=spec, epochs=epochs, wall_seconds=3.5 * seconds, time_to_target_seconds=reached,
                                input_shape="1x28x28"))
            too_large = RunSpec(model="seed-cnn", batch_size=65536, epochs=3, threads=2, val_split=0.1,
                                target_accuracy=0.85)
            store.fail(store.start(too_large, machine), "OOM", "out of memory")
            for threads in (1, 4):
                for precision in ("fp32", "bf16"):
                    for batch in (1, 64, 4096, 40000):
                        spec = InferSpec(model="seed-cnn", batch_size=batch, threads=threads, precision=precision)
                        per_call = 0.0004 * batch ** 0.8 / threads / speed
                        timings = [per_call * f for f in (1.0, 1.1, 0.9, 1.2, 1.05)]
                        store.finish(store.start(spec, machine), InferResult(
                            spec=spec, compute_seconds=timings, overhead_seconds=[t * 1.4 for t in timings],
                            first_call_seconds=0.05 + per_call, input_shape="1x28x28"))


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("columns") / "s.db"
    fill(path)
    return path


def batchlab(*args, columns: int | None = None, cwd: Path | None = None) -> str:
    """`batchlab ARGS` as a real process (its stdout a pipe), with $COLUMNS set if given."""
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    done = subprocess.run([sys.executable, "-m", "batchlab", *map(str, args)], capture_output=True, text=True,
                          env={**env, "MPLBACKEND": "Agg"}, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def parse_terminal(text: str) -> tuple[list[tuple[str, str, list[str]]], dict[str, list[str]]]:
    """The tables `batchlab report` printed: (section, title, header labels) each, the section
    "training" or "inference"; and per section the columns its notes say were not shown. A table
    is bordered (┏ header ┡) or compact (a blank line under its title, each column's header
    underlined with ─)."""
    lines = text.splitlines()
    boundary = next((i for i, line in enumerate(lines) if line.strip().startswith("inference")), len(lines))
    tables, notes = [], {}
    for section, part in (("training", lines[:boundary]), ("inference", lines[boundary:])):
        notes[section] = [name for found in re.finditer(
            r"not shown \(terminal too narrow, \d+ columns\): (.*?); use --format json",
            " ".join(" ".join(part).split()))
            for name in found.group(1).split(", ")]
        for index, line in enumerate(part):
            if line.startswith("┡"):
                top = max(i for i in range(index) if part[i].startswith("┏"))
                head = [[cell.strip() for cell in row.strip()[1:-1].split("┃")] for row in part[top + 1:index]]
                labels = [" ".join(piece for piece in column if piece) for column in zip(*head)]
            elif "─" in line and set(line) <= {"─", " "}:
                top = max(i for i in range(index) if not part[i].strip())
                spans = [match.span() for match in re.finditer("─+", line)]
                labels = [" ".join(row[a:b].strip() for row in part[top + 1:index] if row[a:b].strip())
                          for a, b in spans]
            else:
                continue
            start = max(i for i in range(top) if part[i].strip().startswith(("batchlab results", "inference")))
            tables.append((section, " ".join(row.strip() for row in part[start:top]), labels))
    return tables, notes


def said_in_title(label: str, title: str) -> bool:
    """A column whose value is the same in every row of a table, said once in its title."""
    return re.search(rf"(?:: |, ){re.escape(label)} \S", title) is not None


def html_sections(page: str) -> dict[str, tuple[list[list[str]], list[str]]]:
    """Per section of the page: each table's header labels, and the labels said once above them."""
    found = {}
    for section, start, end in (("training", "<h2>Training</h2>", "<h2>Inference</h2>"),
                                ("inference", "<h2>Inference</h2>", "<h2>Machines</h2>")):
        part = page[page.index(start):page.index(end)]
        heads = [[html.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
                 for table in re.findall(r"<table>(.*?)</table>", part, re.S)]
        same = re.search(r'<p class="same">Same in every row: (.*?)</p>', part)
        folded = [html.unescape(label) for label in re.findall(r"(?:^|, )([^,<]+?) <b>", same.group(1))] if same else []
        found[section] = heads, folded
    return found


def in_order(labels: list[str], order: list[str]) -> bool:
    return [label for label in order if label in labels] == labels


def test_every_column_of_each_spec_is_in_the_terminal_html_csv_and_json(db, tmp_path):
    # Terminal, wide enough for every column: one table per section, the spec's columns in order.
    tables, notes = parse_terminal(batchlab("report", "--db", db, columns=1000))
    assert [(section, labels) for section, _, labels in tables] == [("training", TRAINING_LABELS),
                                                                    ("inference", INFERENCE_LABELS)]
    assert notes == {"training": [], "inference": []}

    # The HTML page: the same columns in the same order, in its tables or said once above them.
    page = tmp_path / "report.html"
    batchlab("report", "--db", db, "--html", page)
    for section, expected in (("training", TRAINING_LABELS), ("inference", INFERENCE_LABELS)):
        heads, folded = html_sections(page.read_text())[section]
        assert all(in_order(head, expected) for head in heads), heads
        assert sorted({label for head in heads for label in head} | set(folded)) == sorted(expected), section

    # CSV and JSON: every such column's raw fields, in the table's order (other fields may follow).
    from batchlab.report.columns import INFERENCE, TRAINING

    def in_table_order(names: list[str], fields: list[str]) -> bool:
        return set(fields) <= set(names) and [names.index(f) for f in fields] == sorted(names.index(f) for f in fields)

    for flags, spec, expected in (((), TRAINING, TRAINING_LABELS), (("--inference",), INFERENCE, INFERENCE_LABELS)):
        assert [column.label for column in spec if column.label in expected] == expected
        fields = [field for column in spec if column.label in expected for field in column.fields]
        rows = json.loads(batchlab("report", "--db", db, "--format", "json", *flags))
        assert rows and all(in_table_order(list(row), fields) for row in rows)
        batchlab("report", "--db", db, "--csv", tmp_path / "rows.csv", *flags)
        with open(tmp_path / "rows.csv", newline="") as handle:
            assert in_table_order(next(csv.reader(handle)), fields)


def test_human_formats_show_the_same_cells(db, tmp_path):
    """A row's cells read the same in the terminal and on the page."""
    terminal = batchlab("report", "--db", db, columns=1000)
    page = tmp_path / "report.html"
    batchlab("report", "--db", db, "--html", page)
    text = re.sub(r"<[^>]+>", "", page.read_text())
    # ddp, 2 workers, batch 16, on the slower machine: 54,000 images in 12.361 s / 2 (and 1.1x that).
    for cell in ("8,340 [7,943–8,737]", "2.00x", "100%", "13.0 (2/2)", "49,557 ★", "0.186"):
        assert cell in terminal and cell in text, cell


def test_cell_formats():
    from batchlab.report.columns import INFERENCE, TRAINING, text

    column = {c.label: c for c in INFERENCE} | {c.label: c for c in TRAINING}
    assert text(column["images / s"], {"images_per_second": 1500.0, "images_per_second_min": 1000.0,
                                       "images_per_second_max": 2500.0}) == "1,500 [1,000–2,500]"
    assert text(column["test acc"], {"test_accuracy": 0.9, "test_accuracy_min": 0.9,
                                     "test_accuracy_max": 0.9}) == "0.9000"  # no spread: no brackets
    assert text(column["speedup"], {"speedup": 1.5}) == "1.50x"
    assert text(column["efficiency"], {"efficiency": 0.754}) == "75%"
    assert text(column["test loss"], {"test_loss": float("nan")}) == "—"
    assert [text(column["p90 ms"], {"latency_p90": s}) for s in (0.0000123, 0.0123, 0.00099996, 1.23456)] == [
        "0.0123", "12.3", "1.00", "1,235"]
    assert text(column["time to target s"], {"time_to_target_seconds": 12.34, "target_accuracy": 0.9,
                                             "target_reached": 2, "n": 3}) == "12.3 (2/3)"
    assert text(column["time to target s"], {"time_to_target_seconds": 12.34, "target_accuracy": 0.0}) == "—"
    best = next(c for c in INFERENCE if c.label == "images / s")
    assert [text(best, {"images_per_second": 49557.2, "best": b}) for b in (True, False)] == ["49,557 ★", "49,557"]


@pytest.mark.parametrize("width", [80, 100])
def test_terminal_table_fits_columns_and_names_what_it_left_out(db, width):
    printed = batchlab("report", "--db", db, columns=width)
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    assert "…" not in printed  # no cell cut short to fit
    tables, notes = parse_terminal(printed)
    for section, expected in (("training", TRAINING_LABELS), ("inference", INFERENCE_LABELS)):
        mine = [(title, labels) for found, title, labels in tables if found == section]
        assert mine, section
        for title, labels in mine:
            assert in_order(labels, expected), labels
            assert "images / s" in labels  # the essential figures stay, whatever else goes
            assert ("test acc" if section == "training" else "p50 ms") in labels
            missing = [label for label in expected if label not in labels]
            # every column not in this table is either the same in all its rows (said in its
            # title) or named as not shown
            assert all(said_in_title(label, title) or label in notes[section] for label in missing), (title, missing)
        shown_somewhere = {label for _, labels in mine for label in labels}
        assert notes[section] and not set(notes[section]) & shown_somewhere
        assert in_order(notes[section], expected)


@pytest.mark.parametrize("width", [80, 100])
def test_runs_table_fits_columns_one_row_per_run(db, width):
    """report --runs: one row per run (98 in the store) under the RUNS spec, fitted like the others;
    the OOM run's error is shown; JSON carries the same rows, the spec's fields first."""
    from batchlab.report.columns import RUNS

    printed = batchlab("report", "--db", db, "--runs", columns=width)
    assert max(len(line) for line in printed.splitlines()) <= width
    assert "batchlab runs" in printed and "…" not in printed
    _, notes = parse_terminal(printed.replace("batchlab runs", "batchlab results"))
    assert ("out of memory" in printed) == (width == 100) and ("error" in notes["training"]) == (width == 80)
    rows = json.loads(batchlab("report", "--db", db, "--runs", "--format", "json"))
    assert len(rows) == 2 * (4 * 2 * 3 * 2 + 1)
    fields = [f for column in RUNS for f in column.fields if f in rows[0]]
    assert list(rows[0])[:len(fields)] == fields and "run_id" in fields and "error" in fields
    data_rows = [line for line in printed.splitlines() if re.search(r"\d\.\d{4}", line)]
    assert len(data_rows) >= 2 * 4 * 2 * 3 * 2  # every DONE run has its own row (wrapped rows may add lines)


def test_terminal_width_is_columns_even_off_a_terminal(db):
    """$COLUMNS is respected when stdout is a pipe; without it a pipe gets 200 columns."""
    assert max(map(len, batchlab("report", "--db", db, columns=120).splitlines())) <= 120
    assert max(map(len, batchlab("report", "--db", db).splitlines())) <= 200


def html_table_extents(page: Path, width: int) -> dict:
    """Open `page` in headless Chromium `width` px wide; return the viewport width, the page's
    scroll width and each table's right edge (measured by a script added to a copy of the page)."""
    script = """<script>
    const found = {viewport: window.innerWidth, scroll: document.documentElement.scrollWidth,
                   tables: [...document.querySelectorAll('table')]
                             .map(t => Math.ceil(t.getBoundingClientRect().right))};
    const out = document.createElement('pre'); out.id = 'extents'; out.textContent = JSON.stringify(found);
    document.body.appendChild(out);</script>"""
    folder = Path(tempfile.mkdtemp())
    copy = folder / "measured.html"
    copy.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={folder / 'profile'}", f"--window-size={width},4000", "--dump-dom",
                          copy.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(html.unescape(re.search(r'<pre id="extents">(.*?)</pre>', dom, re.S).group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_html_tables_fit_a_1200_px_page_with_efficiency_and_p90(db, tmp_path):
    page = tmp_path / "report.html"
    batchlab("report", "--db", db, "--html", page)
    sections = html_sections(page.read_text())
    assert "efficiency" in {label for head in sections["training"][0] for label in head}
    assert "p90 ms" in {label for head in sections["inference"][0] for label in head}
    assert not re.search(r"overflow(-x)?\s*:\s*(auto|scroll)", page.read_text())  # fitted, not scrolled
    extents = html_table_extents(page, 1200)
    assert extents["viewport"] == 1200 and len(extents["tables"]) >= 2
    assert extents["scroll"] <= extents["viewport"], extents
    assert max(extents["tables"]) <= extents["viewport"], extents
