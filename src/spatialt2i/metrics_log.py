"""Training metrics: TensorBoard scalars and JSON-lines records, shared by the three trainers.

Only the main process writes (``active=False`` elsewhere makes every call a no-op). TensorBoard is
optional: without it the JSON-lines files still hold everything, and a warning says so once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLog:
    """``scalars`` -> ``OUT/<tb_dir>`` (TensorBoard); ``append(name, record)`` -> ``OUT/<name>`` (JSON lines)."""

    def __init__(self, out: str | Path | None, tb_dir: str = "tb", active: bool = True,
                 purge_step: int | None = None) -> None:
        self.out = Path(out) if out is not None else None
        self.active = active and self.out is not None
        self.tb: Any = None
        if self.active:
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / tb_dir), purge_step=purge_step)
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to the JSON-lines files only")

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """The numbers among ``values`` (not bools, not strings) as TensorBoard scalars at ``step``."""
        if self.tb is None:
            return
        for tag, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(tag, v, step)

    def append(self, name: str, record: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.out / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
