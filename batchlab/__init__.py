"""batchlab: measure how batch size and parallelism shape neural-network training and inference."""

__version__ = "0.1.0"

from .engine import EpochRecord, RunResult  # noqa: E402
from .strategies import run  # noqa: E402
from .spec import ExperimentSpec, RunSpec, SpecError  # noqa: E402


def results(db: str = "batchlab.db"):
    """Every stored run of the store `db`, one row per run, as a pandas DataFrame."""
    from .store import Store

    with Store(db) as store:
        return store.runs_frame()


__all__ = ["RunSpec", "ExperimentSpec", "RunResult", "EpochRecord", "SpecError", "run", "results", "__version__"]
