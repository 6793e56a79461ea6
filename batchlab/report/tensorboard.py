"""Export stored training runs as TensorBoard event files: one directory per run, the per-epoch
figures as scalars (step = epoch), as the small-batch study looked at its curves."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..core.errors import ExportError

SCALARS = {  # TensorBoard tag → per-epoch column
    "loss/train": "train_loss", "loss/val": "val_loss", "loss/test": "test_loss",
    "accuracy/train": "train_accuracy", "accuracy/val": "val_accuracy", "accuracy/test": "test_accuracy",
    "time/train_seconds": "train_seconds", "time/eval_seconds": "eval_seconds",
    "throughput/images_per_second": "images_per_second",
}


def run_directory(row: pd.Series) -> str:
    """A readable, unique directory name: the settings people filter on, then the run key."""
    name = (f"{row['dataset']}_{row['model']}_bs{row['batch_size']}_{row['device']}_{row['precision']}_"
            f"{row['strategy']}{row['workers']}_t{row['threads']}_r{row['repeat']}_{row['run_key']}")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def tensorboard(epochs: pd.DataFrame, runs: pd.DataFrame, directory: Path) -> list[Path]:
    """Write one event-file directory per DONE run; returns the directories written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExportError("TensorBoard export needs the tensorboard package: pip install 'batchlab[tensorboard]'") from None

    epochs = epochs.assign(images_per_second=epochs["images"] / epochs["train_seconds"])
    written = []
    for _, run in runs[runs["status"] == "DONE"].iterrows():
        target = Path(directory) / run_directory(run)
        with SummaryWriter(log_dir=str(target)) as writer:
            for _, record in epochs[epochs["run_id"] == run["run_id"]].iterrows():
                for tag, column in SCALARS.items():
                    value = record[column]
                    if value is not None and value == value:  # skip missing (NaN) figures
                        writer.add_scalar(tag, float(value), int(record["epoch"]))
        written.append(target)
    return written
