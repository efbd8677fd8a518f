"""Training metrics to `WORKDIR/metrics.jsonl` and TensorBoard (tensorboardX), on process 0 only.

Each jsonl line is one record: `{"step": int, "split": "train"|"validation"|"test", "time": unix s,
<name>: float, ...}`. A resumed run appends, so a step can appear twice (the later line wins).
TensorBoard scalars are named `<split>/<name>` under `WORKDIR/tensorboard`; a resumed run hides the events
written past its checkpoint (`MetricsWriter`'s start_step).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
import jax
from etils import epath

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


class MetricsWriter:
  """Appends metric records; does nothing on processes other than 0.

  start_step: the step the run starts or resumes from. TensorBoard then hides the events that an earlier
  run, killed after its last checkpoint, wrote past it (tensorboardX's `purge_step`), so a resumed run's
  curves do not double back.
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None, start_step: int = 0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = epath.Path(workdir) / METRICS_FILE
    self._file = None
    self._remote_lines = None  # object stores cannot append: keep the lines and rewrite the file
    self._tensorboard = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self.path.parent.mkdir(parents=True, exist_ok=True)
      if '://' in os.fspath(self.path):
        self._remote_lines = self.path.read_text().splitlines() if self.path.exists() else []
      else:
        self._file = open(self.path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
      self._tensorboard = SummaryWriter(logdir=os.fspath(epath.Path(workdir) / TENSORBOARD_DIR),
                                        purge_step=start_step + 1)

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    """One record; NaN/inf are written as JSON null."""
    if not self.enabled:
      return
    values = {name: float(value) for name, value in metrics.items()}
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({name: value if math.isfinite(value) else None for name, value in values.items()})
    if self._file is not None:
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()
    else:
      self._remote_lines.append(json.dumps(record))
      self.path.write_text('\n'.join(self._remote_lines) + '\n')
    for name, value in values.items():
      self._tensorboard.add_scalar(f'{split}/{name}', value, int(step))

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      self._tensorboard.add_text(tag, text)

  def flush(self) -> None:
    if self.enabled:
      if self._file is not None:
        self._file.flush()
      self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled and self._tensorboard is not None:
      if self._file is not None:
        self._file.close()
        self._file = None
      self._tensorboard.close()
      self._tensorboard = None

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> dict[int, dict]:
  """step -> the last record of that step (optionally of one split) from `WORKDIR/metrics.jsonl`. A last
  line cut short (a run killed mid-write) is ignored."""
  records: dict[int, dict] = {}
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return records
  lines = path.read_text(encoding='utf-8').splitlines()
  for number, line in enumerate(lines):
    if line.strip():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        if number == len(lines) - 1:  # a line cut short by a killed run: the rerun writes it again
          break
        raise
      if split is None or record['split'] == split:
        records[record['step']] = record
  return records
