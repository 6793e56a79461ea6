"""Whether this process was started by torchrun (or another launcher) as one rank of a job: read
from the environment alone, so that the command can tell before it imports torch."""

from __future__ import annotations

import os

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_externally() -> bool:
    """True when torchrun (or another launcher) made this process one rank of a job."""
    return all(name in os.environ for name in LAUNCH_ENV)
