"""Processes batchlab starts end with the process that started them: no orphans."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent() -> None:
    """End this process if the process that started it dies (even by SIGKILL): no orphans."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
