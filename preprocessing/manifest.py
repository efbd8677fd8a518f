"""The hand-off between preprocessing and the TFDS builder: a folder of token clips plus a manifest.

Layout of a tokens folder (written by `preprocessing`, read by `preprocessing.tfds_builder`):

  <tokens_dir>/
    manifest.jsonl               one `ClipRecord` per line (JSON), in any order
    clips/<clip_id>.npz          arrays `backing` and `lead`, int16 [K, N], raw (not delayed) codes
    preprocessing_config.json    the config the run used (recorded in the dataset's metadata)

Rules:
- `clip_id` is filesystem-safe ([A-Za-z0-9_.-]) and unique; it never comes from a title.
- `recording_id` names the source recording. Augmented copies keep their source's `recording_id`,
  so a split by recording keeps every copy on one side.
- `backing` and `lead` of a clip have the same N (both stems were clipped and augmented together).
- Every file is written atomically (temporary name, then rename), so a clip's `.npz` exists only whole,
  and a manifest line is appended only after its `.npz` is in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

MANIFEST_NAME = 'manifest.jsonl'
CLIPS_DIR = 'clips'
CONFIG_NAME = 'preprocessing_config.json'
_SAFE_ID = re.compile(r'^[A-Za-z0-9_.-]+$')


class ManifestError(ValueError):
  """A tokens folder or manifest entry that cannot be used; the message names the entry and the fix."""


@dataclasses.dataclass(frozen=True)
class CodecInfo:
  name: str = 'facebook/encodec_32khz'  # hub id, local path, or 'random:SEED'
  sample_rate: int = 32000
  frame_rate: int = 50
  num_codebooks: int = 4
  codebook_size: int = 2048


@dataclasses.dataclass(frozen=True)
class ClipRecord:
  clip_id: str
  recording_id: str
  clip_start_s: float  # in the source recording, before augmentation
  clip_end_s: float
  augmentation: str  # 'none', 'pitch+2', 'pitch-2', 'tempo0.9', 'tempo1.1', ...
  num_frames: int  # N
  codec: CodecInfo
  path: str  # relative to the tokens folder: clips/<clip_id>.npz

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'ClipRecord':
    d = dict(d)
    d['codec'] = CodecInfo(**d['codec'])
    return cls(**d)


def safe_id(text: str) -> str:
  """Maps any string to a filesystem-safe id ([A-Za-z0-9_.-], no leading dot)."""
  out = re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('._') or 'x'
  return out[:128]


def clip_path(clip_id: str) -> str:
  if not _SAFE_ID.match(clip_id) or clip_id.startswith('.'):
    raise ManifestError(f'clip_id {clip_id!r} is not filesystem-safe; build it with manifest.safe_id().')
  return f'{CLIPS_DIR}/{clip_id}.npz'


@contextlib.contextmanager
def private_tempdir(prefix: str = 'saxgpt-') -> Iterator[Path]:
  """Points `tempfile` (this process) and TMPDIR (the workers it starts) at a new folder, removed on exit.

  Beam and TFDS make temporary folders they leave behind (Beam's `beam-pipeline-temp*` and `beam-temp*`,
  TFDS's empty `tmp*tfds` from `DatasetInfo.initialize_from_bucket`); without this every run would add some
  to /tmp. Nothing written there outlives the block; outputs go to their own folders.
  """
  path = tempfile.mkdtemp(prefix=prefix)
  saved_tempdir, saved_env = tempfile.tempdir, os.environ.get('TMPDIR')
  tempfile.tempdir, os.environ['TMPDIR'] = path, path
  try:
    yield Path(path)
  finally:
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
      os.environ.pop('TMPDIR', None)
    else:
      os.environ['TMPDIR'] = saved_env
    shutil.rmtree(path, ignore_errors=True)


def _read_umask() -> int:
  mask = os.umask(0o022)  # the only way to read it; set straight back (once, at import, before any threads)
  os.umask(mask)
  return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and a rename. The file gets the
  permissions a plain open() would give (0666 less the umask), not mkstemp's private 0600."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fchmod(f.fileno(), 0o666 & ~_UMASK)
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_clip(tokens_dir: str | os.PathLike, record: ClipRecord, backing: np.ndarray, lead: np.ndarray) -> None:
  """Writes the clip's `.npz` atomically. Append `record` to the manifest afterwards (`append_records`)."""
  for name, arr in (('backing', backing), ('lead', lead)):
    if arr.ndim != 2 or arr.shape[0] != record.codec.num_codebooks or arr.shape[1] != record.num_frames:
      raise ManifestError(
          f'clip {record.clip_id}: {name} has shape {arr.shape}, expected '
          f'[{record.codec.num_codebooks}, {record.num_frames}].')
  import io

  buf = io.BytesIO()
  np.savez(buf, backing=backing.astype(np.int16), lead=lead.astype(np.int16))
  atomic_write_bytes(Path(tokens_dir) / record.path, buf.getvalue())


def append_records(tokens_dir: str | os.PathLike, records: list[ClipRecord]) -> None:
  """Appends records to manifest.jsonl with one write + fsync (each line whole)."""
  if not records:
    return
  path = Path(tokens_dir) / MANIFEST_NAME
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'a', encoding='utf-8') as f:
    f.write(''.join(r.to_json() + '\n' for r in records))
    f.flush()
    os.fsync(f.fileno())


def read_manifest(tokens_dir: str | os.PathLike, *, check_files: bool = True) -> list[ClipRecord]:
  """Reads and validates manifest.jsonl. Duplicate clip_ids keep the last line (a resumed run).

  Raises ManifestError naming the line and the problem: missing folder or manifest, bad JSON,
  missing fields, unsafe ids, or (with check_files) a clip file that does not exist.
  A truncated last line (a run killed mid-append) is ignored.
  """
  tokens_dir = Path(tokens_dir)
  path = tokens_dir / MANIFEST_NAME
  if not path.exists():
    raise ManifestError(
        f'No {MANIFEST_NAME} in {tokens_dir}. Run the preprocessing pipeline first '
        f'(python -m preprocessing --config=configs/data/local.py) or point at its output folder.')
  lines = path.read_text(encoding='utf-8').splitlines()
  records: dict[str, ClipRecord] = {}
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rec = ClipRecord.from_dict(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines):  # a run killed while appending: the line is not whole
        continue
      raise ManifestError(f'{path}:{i}: not valid JSON ({e}). Delete the line or rerun preprocessing.') from e
    except (TypeError, KeyError) as e:
      raise ManifestError(f'{path}:{i}: missing or unknown fields ({e}). Expected the fields of ClipRecord.') from e
    clip_path(rec.clip_id)  # validates the id
    if check_files and not (tokens_dir / rec.path).exists():
      raise ManifestError(
          f'{path}:{i}: clip {rec.clip_id} points at {rec.path}, which does not exist. '
          f'Rerun preprocessing on the same output folder to rebuild it, or remove the line.')
    records[rec.clip_id] = rec
  if not records:
    raise ManifestError(f'{path} lists no clips. Did preprocessing keep any windows? See failures.jsonl.')
  return list(records.values())


def load_clip(tokens_dir: str | os.PathLike, record: ClipRecord) -> tuple[np.ndarray, np.ndarray]:
  """Returns (backing, lead), int16 [K, N], checking shapes against the record."""
  path = Path(tokens_dir) / record.path
  try:
    with np.load(path) as z:
      backing, lead = z['backing'], z['lead']
  except Exception as e:  # zipfile.BadZipFile, KeyError, OSError, ValueError
    raise ManifestError(f'clip {record.clip_id}: cannot read {path} ({e!r}). Rerun preprocessing for it.') from e
  expected = (record.codec.num_codebooks, record.num_frames)
  if backing.shape != expected or lead.shape != expected:
    raise ManifestError(
        f'clip {record.clip_id}: backing {backing.shape} / lead {lead.shape}, manifest says {expected}.')
  return backing, lead


def iter_clips(tokens_dir: str | os.PathLike) -> Iterator[tuple[ClipRecord, np.ndarray, np.ndarray]]:
  for rec in read_manifest(tokens_dir):
    yield (rec, *load_clip(tokens_dir, rec))


# --- Per-recording parts: concurrent workers each write whole files; `merge_parts` makes manifest.jsonl.
# <tokens_dir>/parts/<recording_id>.json   {"recording_id", "complete", "records": [ClipRecord dicts]}
# <tokens_dir>/failures/<key>.json         one failure of the current run; merged into failures.jsonl
PARTS_DIR = 'parts'
FAILURE_PARTS_DIR = 'failures'
FAILURES_NAME = 'failures.jsonl'


def part_path(tokens_dir: str | os.PathLike, recording_id: str) -> Path:
  if not _SAFE_ID.match(recording_id) or recording_id.startswith('.'):
    raise ManifestError(f'recording_id {recording_id!r} is not filesystem-safe; build it with manifest.safe_id().')
  return Path(tokens_dir) / PARTS_DIR / f'{recording_id}.json'


def write_part(tokens_dir: str | os.PathLike, recording_id: str, records: list[ClipRecord], *,
               complete: bool, source: str = '') -> None:
  """Atomically records a recording's clips (their .npz files must exist). complete=False: retry on rerun.
  source: the input it came from (file, folder or URL), which keeps its recording_id in later runs."""
  body = {'recording_id': recording_id, 'complete': complete, 'source': source,
          'records': [dataclasses.asdict(r) for r in sorted(records, key=lambda r: r.clip_id)]}
  atomic_write_bytes(part_path(tokens_dir, recording_id), json.dumps(body, sort_keys=True).encode())


def is_complete(tokens_dir: str | os.PathLike, recording_id: str) -> bool:
  """True when a previous run finished every clip of the recording (a rerun skips it)."""
  path = part_path(tokens_dir, recording_id)
  try:
    return bool(json.loads(path.read_text(encoding='utf-8')).get('complete'))
  except (OSError, ValueError):
    return False


def recorded_sources(tokens_dir: str | os.PathLike) -> dict[str, str]:
  """{recording_id: source} of the recordings earlier runs wrote parts for (parts without a source, from
  before sources were recorded, are left out)."""
  sources = {}
  for path in sorted((Path(tokens_dir) / PARTS_DIR).glob('*.json')):
    try:
      body = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
      continue  # merge_parts names unreadable parts
    if isinstance(body, dict) and body.get('source'):
      sources[str(body.get('recording_id', path.stem))] = str(body['source'])
  return sources


def has_finished_work(tokens_dir: str | os.PathLike) -> bool:
  """Whether a run wrote any part or clip into tokens_dir (its settings then bind later runs)."""
  tokens_dir = Path(tokens_dir)
  return any((tokens_dir / PARTS_DIR).glob('*.json')) or any((tokens_dir / CLIPS_DIR).glob('*.npz'))


def merge_parts(tokens_dir: str | os.PathLike) -> list[ClipRecord]:
  """Rewrites manifest.jsonl (atomically) from every part, sorted by clip_id; returns the records."""
  tokens_dir = Path(tokens_dir)
  records: dict[str, ClipRecord] = {}
  for path in sorted((tokens_dir / PARTS_DIR).glob('*.json')):
    try:
      body = json.loads(path.read_text(encoding='utf-8'))
      part = [ClipRecord.from_dict(d) for d in body['records']]
    except (ValueError, KeyError, TypeError) as e:
      raise ManifestError(f'{path}: unreadable part ({e!r}). Delete it and rerun to rebuild that recording.') from e
    records.update((r.clip_id, r) for r in part if (tokens_dir / r.path).exists())
  ordered = [records[k] for k in sorted(records)]
  atomic_write_bytes(tokens_dir / MANIFEST_NAME, ''.join(r.to_json() + '\n' for r in ordered).encode())
  return ordered


def write_failure(tokens_dir: str | os.PathLike, failure: dict[str, Any]) -> None:
  """Atomically stores one failure ({'item', 'stage', 'reason', ...}) of the current run."""
  import hashlib

  key = hashlib.sha1(f'{failure.get("stage")}|{failure.get("item")}'.encode()).hexdigest()[:16]
  atomic_write_bytes(Path(tokens_dir) / FAILURE_PARTS_DIR / f'{key}.json',
                     json.dumps(failure, sort_keys=True).encode())


def clear_failures(tokens_dir: str | os.PathLike) -> None:
  """Forgets the failures of earlier runs (a rerun retries those items)."""
  for path in (Path(tokens_dir) / FAILURE_PARTS_DIR).glob('*.json'):
    path.unlink(missing_ok=True)


def merge_failures(tokens_dir: str | os.PathLike) -> list[dict[str, Any]]:
  """Writes failures.jsonl (atomically, sorted) from this run's failures; returns them."""
  tokens_dir = Path(tokens_dir)
  failures = [json.loads(p.read_text(encoding='utf-8')) for p in (tokens_dir / FAILURE_PARTS_DIR).glob('*.json')]
  failures.sort(key=lambda f: (str(f.get('item')), str(f.get('stage'))))
  atomic_write_bytes(tokens_dir / FAILURES_NAME, ''.join(json.dumps(f, sort_keys=True) + '\n' for f in failures).encode())
  return failures


def remove_temporaries(tokens_dir: str | os.PathLike) -> int:
  """Deletes temporary files a killed run left behind (atomic_write_bytes names them .<name>.*.tmp)."""
  tokens_dir = Path(tokens_dir)
  removed = 0
  for folder in (tokens_dir, tokens_dir / CLIPS_DIR, tokens_dir / PARTS_DIR, tokens_dir / FAILURE_PARTS_DIR):
    for path in folder.glob('.*.tmp'):
      if path.is_file():
        path.unlink(missing_ok=True)
        removed += 1
  return removed
