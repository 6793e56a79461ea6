"""Property-based fuzzing (issue #15, item 6) of what batchlab reads but did not write: IDX dataset
files, experiment files (TOML) and SQLite files given as a store. Thousands of generated inputs;
the property everywhere: a bad input ends in batchlab's own one-line error (DataError, SpecError,
StoreError) or is accepted correctly, never in a traceback; a file that is refused, or opened
read-only, keeps its bytes, and a real store keeps its rows.

The bugs this fuzzing found are fixed (each fix says why): in batchlab/data and batchlab/spec the
@example lines below replay them; those in batchlab/store have a test each at the end, with the
minimal example.

Hypothesis keeps no example database here, and its caches go to a temporary folder removed at
exit (tests/conftest.py): the repository gets no .hypothesis/. Counts per test: see fuzz(); statistics with
pytest --hypothesis-show-statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gzip
import hashlib
import json
import math
import os
import sqlite3
import struct
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import currently_in_test_context, event, example, given, reject, settings
from hypothesis import strategies as st
from synthetic import IDX_FILES
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.errors import DataError, SpecError, StoreError, UserError
from batchlab.core.records import EpochRecord, InferResult, RunResult
from batchlab.data import registry
from batchlab.data.registry import DataFile, DatasetInfo, decompressed, parse_idx
from batchlab.spec import run as run_module
from batchlab.spec.experiment import MAX_RUNS, ExperimentSpec
from batchlab.spec.fields import PYTHON_TYPES, user_fields
from batchlab.spec.run import InferSpec, RunSpec, field_types
from batchlab.store.schema import MIGRATIONS, SCHEMA_VERSION
from batchlab.store.store import Store

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
# No example database (nothing is written into the repository); no deadline: the first examples
# of a test import modules and touch the disk. Each test sets its own number of examples, sized
# for the whole file to take about half a minute; $BATCHLAB_FUZZ_SCALE multiplies them for a
# longer search (e.g. 10).
FUZZ = settings(database=None, deadline=None)
SCALE = float(os.environ.get("BATCHLAB_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=max(1, round(examples * SCALE)))




@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory) -> Path:
    """Parent of each example's own folder (tmp_path is one folder for all examples of a test)."""
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def scratch(root: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=root) as folder:
        yield Path(folder)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcome(what: str) -> None:
    """Count what became of an input (pytest --hypothesis-show-statistics lists the shares)."""
    if currently_in_test_context():
        event(what)


def assert_one_line(error: BaseException) -> None:
    """The CLI prints a user error's text as it is: it must be one line (splitlines: what a
    terminal breaks on, \\r and U+2028 included)."""
    lines = str(error).splitlines()
    assert len(lines) == 1 and lines[0].strip(), repr(str(error))


def assert_cli_refused(result) -> str:
    """Exit code 2, one line `error: ...` on the output, no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return lines[0]


def mutated(content: bytes) -> st.SearchStrategy[bytes]:
    """`content` as it is, cut short, with bytes added, or with a few bytes overwritten."""
    if not content:
        return st.binary(max_size=16)

    def overwrite(edits: list[tuple[int, int]]) -> bytes:
        changed = bytearray(content)
        for offset, value in edits:
            changed[offset] = value
        return bytes(changed)

    return st.one_of(
        st.just(content),
        st.integers(0, len(content) - 1).map(lambda end: content[:end]),
        st.binary(min_size=1, max_size=16).map(lambda extra: content + extra),
        st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(0, 255)), min_size=1, max_size=4)
        .map(overwrite),
    )


# --- (a) IDX files: the reader below the checksums, the gzip layer, a folder of the four files --------

IDX_MAGIC = b"\x00\x00\x08"  # two zero bytes, element type 0x08 (unsigned byte)
# A registered dataset whose files have no published SHA-256, as MNIST's training images: they are
# checked by their IDX structure only, so fuzzed files reach the reader.
UNCHECKED_IDX = DatasetInfo(name="fuzzed-idx", files=tuple(DataFile(name, None) for name in IDX_FILES),
                            mirrors=("http://127.0.0.1:9/",), class_names=tuple("0123456789"))


def idx_file(shape: tuple[int, ...], data: bytes) -> bytes:
    return IDX_MAGIC + bytes([len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + data


def decode_idx(content: bytes) -> np.ndarray:
    """The test's own reading of well-formed IDX content (the oracle for what was accepted)."""
    ndim = content[3]
    shape = struct.unpack(f">{ndim}I", content[4:4 + 4 * ndim])
    return np.frombuffer(content[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


@st.composite
def idx_contents(draw) -> bytes:
    """A well-formed IDX file of a few small dimensions, as often as not mutated."""
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    size = math.prod(shape)
    return draw(mutated(idx_file(shape, draw(st.binary(min_size=size, max_size=size)))))


@st.composite
def idx_headers(draw) -> bytes:
    """Any dimension count (0..255) and sizes up to 2**32 - 1, then a little data: products that
    overflow, more dimensions than NumPy holds, headers cut short."""
    ndim = draw(st.one_of(st.integers(0, 6), st.integers(0, 255)))
    size = st.one_of(st.integers(0, 4), st.sampled_from([2**16, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
    sizes = draw(st.lists(size, min_size=ndim, max_size=ndim))
    content = IDX_MAGIC + bytes([ndim]) + struct.pack(f">{ndim}I", *sizes) + draw(st.binary(max_size=64))
    return content[:draw(st.integers(0, len(content)))] if draw(st.booleans()) else content


# gzip streams of IDX files or of anything, as often as not mutated.
gzipped = st.one_of(idx_contents(), st.binary(max_size=300)).map(lambda data: gzip.compress(data, mtime=0)) \
    .flatmap(mutated)


@fuzz(2000)
@given(content=st.one_of(st.binary(max_size=200), idx_contents(), idx_headers()))
@example(content=idx_file((2**31, 2**31, 4), b""))  # sizes whose int64 product wraps to 0 (fixed)
@example(content=idx_file((1,) * 100, b"x"))  # more dimensions than NumPy holds (fixed)
def test_idx_reader_parses_or_refuses(content):
    try:
        array = parse_idx(content, "fuzzed")
    except DataError as error:
        assert_one_line(error)
        outcome("refused")
        return
    outcome("accepted")
    # Accepted: exactly the array the header describes, writable (torch takes it as is).
    assert content[:3] == IDX_MAGIC
    expected = decode_idx(content)
    assert array.shape == expected.shape and array.dtype == np.uint8 and array.flags.writeable
    assert np.array_equal(array, expected)


@fuzz(1000)
@given(raw=st.one_of(gzipped, st.binary(min_size=1, max_size=200)))
def test_gzipped_file_decompresses_or_is_refused(scratch_root, raw):
    with scratch(scratch_root) as folder:
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(raw)
        try:
            content = decompressed(path, "fuzzed-idx")
        except DataError as error:
            assert_one_line(error)
            outcome("refused")
            return
        outcome("accepted")
        assert content == gzip.decompress(raw)


@fuzz(500)
@given(raw=gzipped)
def test_downloaded_copy_is_judged_without_a_traceback(scratch_root, raw):
    """A mirror's copy: download.fetch_file catches OSError, EOFError and DataError (the copy is
    bad: the next mirror is tried); anything else from served_problem would end in a traceback."""
    with scratch(scratch_root) as folder:
        path = folder / "served.gz"
        path.write_bytes(raw)
        try:
            problem = registry.IDX.served_problem(path, DataFile("train-images-idx3-ubyte", None))
        except (OSError, EOFError, DataError):
            outcome("bad copy: an error fetch_file catches")
            return
        assert problem is None or len(problem.splitlines()) == 1
        outcome("bad copy: a problem" if problem else "kept")
        if problem is None:
            decode_idx(gzip.decompress(raw))  # kept only if it is a well-formed IDX file


@st.composite
def idx_folders(draw) -> dict[str, bytes]:
    """The four files of an IDX dataset as they lie in a folder (name → bytes), each gzipped or
    plain: drawn consistent, then sizes drawn apart, labels beyond the 10 classes, images of 2 or
    4 dimensions, one file's content mutated, a gzip stream corrupted."""
    files = {}
    for images, labels in ((IDX_FILES[0], IDX_FILES[1]), (IDX_FILES[2], IDX_FILES[3])):
        count = draw(st.integers(0, 5))
        label_count = draw(st.one_of(st.just(count), st.integers(0, 5)))
        sides = draw(st.sampled_from([2, 2, 2, 1, 3]))  # images are N x H x W: 2 sides, mostly
        shape = (count, *draw(st.lists(st.integers(0, 3), min_size=sides, max_size=sides)))
        files[images] = idx_file(shape, draw(st.binary(min_size=math.prod(shape), max_size=math.prod(shape))))
        label_values = draw(st.lists(st.integers(0, 11), min_size=label_count, max_size=label_count))
        files[labels] = idx_file((label_count,), bytes(label_values))
    victim = draw(st.sampled_from([None, *IDX_FILES]))
    if victim:
        files[victim] = draw(mutated(files[victim]))
    on_disk = {}
    for name, content in files.items():
        if draw(st.booleans()):
            packed = gzip.compress(content, mtime=0)
            on_disk[name + ".gz"] = draw(mutated(packed)) if draw(st.integers(0, 7)) == 0 else packed
        else:
            on_disk[name] = content
    return on_disk


@fuzz(600)
@given(files=idx_folders())
def test_idx_folder_loads_or_is_refused(scratch_root, files):
    """The path of a user's folder of IDX files (--data-dir): load and verify."""
    with scratch(scratch_root) as folder, mock.patch.dict(registry.DATASETS, {UNCHECKED_IDX.name: UNCHECKED_IDX}):
        for name, raw in files.items():
            (folder / name).write_bytes(raw)
        try:
            rows = registry.verify(UNCHECKED_IDX.name, folder)
        except DataError as error:
            assert_one_line(error)
            rows = None
        try:
            dataset = registry.load(UNCHECKED_IDX.name, folder)
        except DataError as error:
            assert_one_line(error)
            outcome("refused")
            return
    outcome("loaded")
    # Loaded: each file verified, and the arrays are the files' content, images with one channel.
    assert rows is not None and len(rows) == 4
    contents = [gzip.decompress(files[name + ".gz"]) if name + ".gz" in files else files[name] for name in IDX_FILES]
    train_x, train_y, test_x, test_y = map(decode_idx, contents)
    assert np.array_equal(dataset.train_images, train_x[:, None])
    assert np.array_equal(dataset.test_images, test_x[:, None])
    assert dataset.train_labels.dtype == dataset.test_labels.dtype == np.int64
    assert np.array_equal(dataset.train_labels, train_y) and np.array_equal(dataset.test_labels, test_y)
    assert dataset.classes == 10 and max(train_y.max(initial=0), test_y.max(initial=0)) < 10


# --- (b) experiment files ------------------------------------------------------------------------

RUN_FIELDS, INFER_FIELDS = user_fields(RunSpec), user_fields(InferSpec)
# Each text field's valid words and a near miss.
WORDS = {
    "dataset": ["fashion-mnist", "mnist", "cifar10", "folder:/nonexistent", "folder:", "imagenet"],
    "model": ["mlp", "seed-cnn", "keras-cnn", "torchvision:resnet18", "net.py:build", "resnet"],
    "optimizer": [*run_module.OPTIMIZERS, "rmsprop"],
    "strategy": [*run_module.STRATEGIES, "zero"],
    "device": ["cpu", "cuda", "cuda:1", "mps", "tpu"],
    "precision": [*run_module.PRECISIONS, "fp8"],
    "input": [*run_module.INPUTS, "disk"],
    "lr_scaling": [*run_module.LR_SCALINGS, "cube"],
    "schedule": [*run_module.SCHEDULES, "linear"],
    "weights": ["", "latest", "0123abcd"],
}
# Text a TOML string can hold as written here: no surrogates (not valid UTF-8).
text = st.text(st.characters(codec="utf-8"), max_size=10)
# Whole numbers near the edges: SQLite's 64 bits, beyond them, and beyond TOML's.
whole = st.one_of(st.integers(-2, 8), st.sampled_from([2**63 - 1, 2**63, -2**63 - 1, 10**30]))
scalar = st.one_of(whole, st.floats(), st.booleans(), text, st.sampled_from(sum(WORDS.values(), [])),
                   st.dates(), st.datetimes().map(lambda moment: moment.replace(fold=0)))  # TOML keeps no fold
# Ranges ("1..8", "1..cores") small enough to run, or too long to list (refused before listing).
ranges = st.builds("{}..{}".format, st.integers(0, 3),
                   st.one_of(st.integers(0, 4), st.just("cores"), st.sampled_from([MAX_RUNS + 1, 10**30])))


def links(fields: list[str]) -> st.SearchStrategy[str]:
    """'=other' or '=other*k': another field's value."""
    return st.builds(lambda name, factor: f"={name}" + ("" if factor is None else f"*{factor}"),
                     st.sampled_from(fields), st.one_of(st.none(), st.integers(0, 3), st.just(10**20)))


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Three times in four from `valid`, else any value: enough files pass to check what is accepted."""
    return st.sampled_from([valid, valid, valid, scalar]).flatmap(lambda chosen: chosen)  # one_of merges repeats


def field_values(name: str, kind: type) -> st.SearchStrategy:
    """A value or list of values for field `name`: mostly of the field's type, sometimes anything."""
    typed = {"int": st.one_of(st.integers(0, 4), whole, ranges, links(user_fields(kind))),
             "float": st.one_of(st.floats(), whole),
             "bool": st.booleans(),
             "str": st.sampled_from(WORDS.get(name, ["x"]))}[field_types(kind)[name]]
    one = mostly(typed)
    return st.one_of(one, st.lists(one, max_size=3))


def field_tables(fields: list[str], kind: type, most: int) -> st.SearchStrategy[dict]:
    return st.lists(st.sampled_from(fields), max_size=most, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: field_values(name, kind) for name in names}))


@st.composite
def experiment_documents(draw) -> dict:
    """An experiment file's values: a few run settings, then perhaps name, description, repeats,
    [[grid]] tables, an [infer] table and an unknown key, each well-formed or not."""
    document = draw(field_tables(RUN_FIELDS, RunSpec, 5))
    extras = {
        "name": mostly(text),
        "description": mostly(text),
        "repeats": mostly(st.one_of(st.integers(1, 3), st.integers(-1, 3), st.just(10**9))),
        "grid": mostly(st.lists(field_tables(RUN_FIELDS, RunSpec, 3), max_size=2)),
        "infer": mostly(field_tables(INFER_FIELDS, InferSpec, 4)),
    }
    for key in draw(st.lists(st.sampled_from(list(extras)), unique=True)):
        document[key] = draw(extras[key])
    if draw(st.sampled_from([False, False, False, True])):
        document.setdefault(draw(text), draw(scalar))
    return document


def toml_string(value: str) -> str:
    # JSON's escapes are TOML's; DEL must be escaped in TOML, not in JSON.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(values: dict) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in values.items())


def read_experiment(path: Path) -> list[RunSpec | InferSpec] | None:
    """The specs a sweep of experiment file `path` would run, checked; None if it is refused."""
    try:
        experiment = ExperimentSpec.from_toml(path)
        specs = experiment.runs() + experiment.inferences()
    except SpecError as error:
        assert_one_line(error)
        outcome("refused")
        return None
    outcome("accepted")
    # Accepted: text name and description; specs validated, of their fields' exact types (True is no
    # whole number, 1 no float), each whole number storable in SQLite's 64 bits, no duplicate.
    assert isinstance(experiment.name, str) and isinstance(experiment.description, str)
    assert specs and len({(type(spec), spec.key) for spec in specs}) == len(specs)
    for spec in specs:
        types = field_types(type(spec))
        for f in dataclasses.fields(spec):
            value = getattr(spec, f.name)
            assert type(value) is PYTHON_TYPES[types[f.name]], (f.name, value)
            assert not isinstance(value, int) or -2**63 <= value < 2**63, (f.name, value)
        assert spec.validated() == spec
    return specs


@fuzz(1000)
@given(document=experiment_documents())
def test_experiment_file_is_read_or_refused(scratch_root, document):
    written = toml_document(document)
    assert repr(tomllib.loads(written)) == repr(document)  # the test's own TOML writer is right
    with scratch(scratch_root) as folder:
        path = folder / "fuzzed.toml"
        path.write_text(written, encoding="utf-8")
        read_experiment(path)


def experiment_file_mutations() -> st.SearchStrategy[bytes]:
    """The repository's experiment files, cut, grown or overwritten, or with lines left out."""
    contents = [path.read_bytes() for path in sorted((REPO / "experiments").glob("*.toml"))]
    without_lines = st.sampled_from(contents).flatmap(lambda content: st.lists(
        st.booleans(), min_size=content.count(b"\n") + 1, max_size=content.count(b"\n") + 1).map(
        lambda keep: b"\n".join(line for line, kept in zip(content.split(b"\n"), keep) if kept)))
    return st.one_of(st.sampled_from(contents).flatmap(mutated), without_lines)


@fuzz(1000)
@given(raw=st.one_of(text.map(str.encode), st.binary(max_size=200), experiment_file_mutations()))
@example(raw=b"batch_size = " + b"[" * 5000)  # nested too deeply for tomllib (fixed)
@example(raw=b'"bad\\nkey" = 1')  # an unknown key with a line break (fixed: the error stays one line)
@example(raw=b'batch_size = "1..99999999999999999999999"')  # a range too long to list (fixed)
@example(raw=b"model = 'mlp'\nseed = 9223372036854775807\nrepeats = 2")  # seed + 1 beyond 64 bits (fixed)
@example(raw=b"name = 5\nbatch_size = 8")  # a name that is no text (fixed)
@example(raw=b"repeats = true\nbatch_size = 8")  # true as a number of repeats (fixed)
def test_any_bytes_as_experiment_file(scratch_root, raw):
    with scratch(scratch_root) as folder:
        path = folder / "fuzzed.toml"
        path.write_bytes(raw)
        read_experiment(path)


def test_the_repository_experiment_files_are_accepted():
    """The mutations above start from these: each one as written is a valid experiment."""
    for path in sorted((REPO / "experiments").glob("*.toml")):
        assert read_experiment(path), path


# --- (c) SQLite files given as a store ----------------------------------------------------------

MACHINE = "m1"
# What cli.app.user_errors reports in one line: batchlab's errors, SQLite's, and OSError (pandas'
# DatabaseError is one).
CLI_ONE_LINE = (UserError, sqlite3.Error, OSError)


@dataclass(frozen=True)
class RealStore:
    raw: bytes  # the store's bytes (no write-ahead log: it was closed)
    rows: list  # its rows as stored_rows reads them


def stored_rows(path: Path) -> list:
    """The runs, measurements and machines of a store (via JSON: NaN, a missing value, is null)."""
    with Store(path, readonly=True) as store:
        runs = store.runs_frame()[["run_key", "status", "test_accuracy", "epochs_done"]]
        inference = store.inference_frame()[["run_key", "status", "images_per_second"]]
        return [json.loads(runs.to_json(orient="records")), json.loads(inference.to_json(orient="records")),
                store.machines()]


def write_real_store(path: Path) -> None:
    """A store with results: a finished and a failed training run, and a finished inference."""
    done, failed, measured = RunSpec(model="mlp", batch_size=8), RunSpec(model="mlp", batch_size=16), \
        InferSpec(model="mlp", batch_size=4)
    epochs = [EpochRecord(epoch=e, train_loss=1.0 / e, train_accuracy=0.5, val_loss=None, val_accuracy=None,
                          test_loss=0.5, test_accuracy=0.8, train_seconds=2.0, eval_seconds=0.5, images=1000,
                          steps=10) for e in (1, 2)]
    with Store(path) as store:
        store.record_machine(MACHINE, {"hostname": "h"})
        store.finish(store.start(done, MACHINE), RunResult(spec=done, epochs=epochs, parameters=10, wall_seconds=5.0))
        store.fail(store.start(failed, MACHINE), "FAILED", "boom")
        store.finish(store.start(measured, MACHINE),
                     InferResult(spec=measured, compute_seconds=[0.1, 0.2], overhead_seconds=[0.2, 0.3]))


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> RealStore:
    path = tmp_path_factory.mktemp("real-store") / "batchlab.db"
    write_real_store(path)
    return RealStore(path.read_bytes(), stored_rows(path))


def read_everything(store: Store) -> None:
    """Every reading a report or export makes; errors the CLI reports in one line are fine."""
    try:
        store.runs_frame(), store.epochs_frame(), store.evaluations_frame(), store.inference_frame()
        store.machines(), store.max_batch_frame(), store.advice_plans()
    except CLI_ONE_LINE:
        outcome("read: a one-line error")


def open_or_refuse(path: Path, readonly: bool) -> Store | None:
    """Store(path): opened, or refused with a StoreError naming the file, which kept its bytes.
    (Not checked here: one line. SQLite's message may quote a garbled schema, line breaks and all.)"""
    before = digest(path)
    try:
        store = Store(path, readonly=readonly)
        outcome("opened")
        return store
    except StoreError as error:
        assert str(error).startswith(str(path)), str(error)
        outcome("refused")
    assert digest(path) == before
    return None


# Edits of a store's bytes at offsets taken modulo its size: mostly in the header (100 bytes) and
# the first pages (the schema), otherwise anywhere.
offsets = st.one_of(st.integers(0, 99), st.integers(0, 16383), st.integers(0, 2**20))
edits = st.lists(st.one_of(st.tuples(st.just("set"), offsets, st.integers(0, 255)),
                           st.tuples(st.just("cut"), offsets, st.just(0)),
                           st.tuples(st.just("zero"), offsets, st.integers(1, 4096))), min_size=1, max_size=4)


def edited(raw: bytes, changes: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(raw)
    for kind, offset, value in changes:
        if not data:
            break
        at = offset % len(data)
        if kind == "set":
            data[at] = value
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at + value] = bytes(len(data[at:at + value]))
    return bytes(data)


@fuzz(400)
@given(changes=edits, readonly=st.booleans())
def test_garbled_store_is_read_or_refused(scratch_root, real_store, changes, readonly):
    """A store cut short or with bytes overwritten: refused with a StoreError and unchanged, or
    opened and read; read-only, it never changes a byte."""
    with scratch(scratch_root) as folder:
        path = folder / "garbled.db"
        path.write_bytes(edited(real_store.raw, changes))
        before = digest(path)
        store = open_or_refuse(path, readonly)
        if store is not None:
            with store:
                read_everything(store)
        if readonly:
            assert digest(path) == before


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, declared type)
    rows: tuple[tuple, ...]


@dataclass(frozen=True)
class ForeignDatabase:
    """Another program's SQLite database."""

    tables: tuple[Table, ...]
    user_version: int
    journal_mode: str
    page_size: int
    with_index: bool
    with_view: bool


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Names without control characters or line separators (a table name with one: see
# test_store_error_naming_a_foreign_table_stays_one_line); batchlab's own names among them.
names = st.one_of(st.sampled_from(["runs", "machines", "epochs", "weights", "inference", "notes", "users"]),
                  st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
                          min_size=1, max_size=8)).filter(lambda name: not name.lower().startswith("sqlite_"))
cell = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), text, st.binary(max_size=20))


@st.composite
def tables(draw) -> Table:
    columns = draw(st.lists(st.tuples(names, st.sampled_from(["", "INTEGER", "TEXT", "REAL", "BLOB"])),
                            min_size=1, max_size=3, unique_by=lambda column: column[0].lower()))
    rows = draw(st.lists(st.tuples(*[cell] * len(columns)), max_size=3))
    return Table(draw(names), tuple(columns), tuple(rows))


foreign_databases = st.builds(
    ForeignDatabase,
    tables=st.lists(tables(), min_size=1, max_size=3, unique_by=lambda table: table.name.lower()).map(tuple),
    # Any user_version, batchlab's own included: the tables tell another program's database apart.
    user_version=st.one_of(st.integers(-3, SCHEMA_VERSION + 3), st.integers(-2**31, 2**31 - 1)),
    journal_mode=st.sampled_from(["DELETE", "WAL"]),
    page_size=st.sampled_from([512, 4096, 65536]),
    with_index=st.booleans(), with_view=st.booleans())


def write_foreign(path: Path, database: ForeignDatabase) -> None:
    """Write `database` as its program would; reject the example if SQLite refuses the schema."""
    db = sqlite3.connect(path)
    try:
        db.execute(f"PRAGMA page_size = {database.page_size}")
        db.execute(f"PRAGMA journal_mode = {database.journal_mode}")
        for table in database.tables:
            db.execute(f"CREATE TABLE {quoted(table.name)} "
                       f"({', '.join(f'{quoted(name)} {kind}' for name, kind in table.columns)})")
            db.executemany(f"INSERT INTO {quoted(table.name)} VALUES ({', '.join('?' * len(table.columns))})",
                           table.rows)
        first = database.tables[0]
        if database.with_index:
            db.execute(f"CREATE INDEX {quoted(first.name + ' index')} ON {quoted(first.name)} "
                       f"({quoted(first.columns[0][0])})")
        if database.with_view:
            db.execute(f"CREATE VIEW {quoted(first.name + ' view')} AS SELECT * FROM {quoted(first.name)}")
        db.execute(f"PRAGMA user_version = {database.user_version}")
        db.commit()
    except sqlite3.Error:
        reject()
    finally:
        db.close()


@fuzz(500)
@given(database=foreign_databases, readonly=st.booleans())
def test_foreign_sqlite_database_is_refused_unchanged(scratch_root, database, readonly):
    with scratch(scratch_root) as folder:
        path = folder / "other-program.db"
        write_foreign(path, database)
        before = digest(path)
        try:
            Store(path, readonly=readonly)
        except StoreError as error:
            assert_one_line(error)
        else:
            pytest.fail("another program's database was opened as a store")
        assert digest(path) == before


sqlite_header = b"SQLite format 3\x00"


# From 1 byte (an empty file: test_empty_file_is_no_store_to_read).
@fuzz(1000)
@given(raw=st.one_of(st.binary(min_size=1, max_size=600), st.binary(max_size=600).map(sqlite_header.__add__)),
       readonly=st.booleans())
def test_random_bytes_are_refused_unchanged(scratch_root, raw, readonly):
    with scratch(scratch_root) as folder:
        path = folder / "random.db"
        path.write_bytes(raw)
        store = open_or_refuse(path, readonly)
        if store is not None:
            store.close()
            pytest.fail("random bytes were opened as a store")


def test_empty_file_is_no_store_to_read(tmp_path):
    """An empty file: read-only it is refused and stays empty (a writable open makes it a new
    store, as SQLite makes it a new database)."""
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="empty SQLite database"):
        Store(path, readonly=True)
    assert path.read_bytes() == b""


def schema_1_store(path: Path) -> None:
    """A store as batchlab's first schema wrote it: read-only, it is migrated in memory only."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
        db.execute("INSERT INTO machines VALUES ('m1', '{\"hostname\": \"h\"}', '2024-01-01T00:00:00+00:00')")
        db.commit()


@pytest.mark.parametrize("make", [write_real_store, schema_1_store], ids=["current", "schema-1"])
def test_read_only_open_changes_no_byte_of_a_store(tmp_path, make):
    path = tmp_path / "batchlab.db"
    make(path)
    before, rows = digest(path), stored_rows(path)
    with Store(path, readonly=True) as store:
        read_everything(store)
    report = runner.invoke(app, ["report", "--db", str(path)])
    assert report.exit_code == 0, report.output
    assert digest(path) == before and stored_rows(path) == rows


# --- the command line: one line, exit code 2, no traceback ----------------------------------------

@fuzz(30)
@given(data=st.data())
def test_report_refuses_a_file_that_is_no_store(scratch_root, data):
    with scratch(scratch_root) as folder:
        path = folder / "given.db"
        if data.draw(st.booleans(), label="an SQLite database"):
            write_foreign(path, data.draw(foreign_databases, label="database"))
        else:
            path.write_bytes(data.draw(st.binary(min_size=1, max_size=600), label="bytes"))
        before = digest(path)
        result = runner.invoke(app, ["report", "--db", str(path)])
        assert_cli_refused(result)
        assert digest(path) == before


@fuzz(30)
@given(raw=st.one_of(experiment_documents().map(toml_document).map(str.encode), st.binary(max_size=200),
                     experiment_file_mutations()))
def test_sweep_refuses_a_bad_experiment_file_and_keeps_the_store(scratch_root, real_store, raw):
    with scratch(scratch_root) as folder:
        experiment = folder / "fuzzed.toml"
        experiment.write_bytes(raw)
        if read_experiment(experiment) is not None:
            reject()  # a valid experiment would start a real sweep: not here
        db = folder / "batchlab.db"
        db.write_bytes(real_store.raw)
        line = assert_cli_refused(runner.invoke(app, ["sweep", str(experiment), "--db", str(db)]))
        assert db.read_bytes() == real_store.raw and stored_rows(db) == real_store.rows, line


# --- store bugs found by the fuzzing above, fixed: their minimal examples ---------------------------

def foreign_database(path: Path, user_version: int = 0, schema: str = "CREATE TABLE notes (x);") -> None:
    """Another program's database, as small as the example needs."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(f"{schema} PRAGMA user_version = {user_version};")


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_store_refuses_a_foreign_database_at_the_current_schema_version(tmp_path, readonly):
    path = tmp_path / "other-program.db"
    foreign_database(path, user_version=SCHEMA_VERSION)
    before = digest(path)
    with pytest.raises(StoreError):
        Store(path, readonly=readonly)
    assert digest(path) == before


def test_store_refuses_a_database_of_views_only(tmp_path):
    path = tmp_path / "other-program.db"
    foreign_database(path, schema="CREATE VIEW answer AS SELECT 42 AS value;")
    before = digest(path)
    with pytest.raises(StoreError):
        Store(path)
    assert digest(path) == before


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_store_refuses_a_schema_that_is_not_utf8(tmp_path, readonly):
    path = tmp_path / "garbled.db"
    foreign_database(path)
    raw = path.read_bytes()
    assert b"notes (x)" in raw
    path.write_bytes(raw.replace(b"notes (x)", b"notes \xff\xff\xff"))  # same length: a syntax error
    with pytest.raises(StoreError):
        Store(path, readonly=readonly)


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_store_refuses_a_negative_schema_version(tmp_path, readonly):
    path = tmp_path / "other-program.db"
    foreign_database(path, user_version=-SCHEMA_VERSION - 1)
    with pytest.raises(StoreError):
        Store(path, readonly=readonly)


def test_store_refuses_a_file_of_one_byte(tmp_path):
    path = tmp_path / "batchlab.db"
    path.write_bytes(b"\n")
    with pytest.raises(StoreError):
        Store(path)
    assert path.read_bytes() == b"\n"


@pytest.mark.parametrize("old, new", [
    (b'{"hostname"', b'x"hostname"'),  # a machine's fingerprint is no JSON: json.loads in Store.machines
    (b"input_used", b"input_usee"),  # a column renamed in the schema: KeyError in Store.runs_frame
    (b"input_used", b"input_use\xff"),  # a column name that is no UTF-8: UnicodeDecodeError
], ids=["fingerprint", "column-name", "column-name-not-utf8"])
def test_report_on_a_garbled_store(tmp_path, old, new):
    path = tmp_path / "batchlab.db"
    write_real_store(path)
    raw = path.read_bytes()
    assert old in raw
    path.write_bytes(raw.replace(old, new))  # same length: SQLite finds every page where it was
    assert_cli_refused(runner.invoke(app, ["report", "--db", str(path)]))


def test_store_error_naming_a_foreign_table_stays_one_line(tmp_path):
    path = tmp_path / "other-program.db"
    foreign_database(path, schema='CREATE TABLE "first\rsecond" (x);')
    with pytest.raises(StoreError) as refused:
        Store(path)
    assert_one_line(refused.value)
