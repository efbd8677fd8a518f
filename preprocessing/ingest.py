"""Ingest: turn the configured inputs into `Recording`s (a mix to separate, or a backing + solo pair).

Sources (config.source.kind):
  youtube  video/playlist URLs or .txt files of URLs; audio is downloaded with yt-dlp and extracted to
           WAV with ffmpeg (the binary that `imageio-ffmpeg` ships). Only http(s) URLs whose host is in
           config.source.allowed_hosts are accepted. Files are named from yt-dlp ids, never titles.
  local    audio files and folders (searched recursively), any format soundfile or ffmpeg reads.
  stems    ROOT/<recording_id>/backing.wav + ROOT/<recording_id>/solo.wav (what preprocessing/synth.py writes).
  filosax  ROOT/Backing/NN/*.wav + ROOT/Participant k/NN/Sax.wav: each participant's take of piece NN
           pairs with the backing of piece NN (several backing files are summed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from preprocessing import manifest

KINDS = ('youtube', 'local', 'stems', 'filosax')
_LOG = logging.getLogger(__name__)


class IngestError(ValueError):
  """An input that cannot be used; the message names it and says what to do."""


@dataclasses.dataclass(frozen=True)
class Video:
  """One downloadable URL after playlist expansion."""
  recording_id: str  # from the extractor and the yt-dlp id, e.g. 'youtube-dQw4w9WgXcQ'
  url: str


@dataclasses.dataclass(frozen=True)
class Recording:
  """One source recording: either a `mix` to separate, or `backing` files + a `solo` file (stems)."""
  recording_id: str  # filesystem-safe (manifest.safe_id)
  source: str  # the URL or path it came from, for logs and failures.jsonl
  mix: str = ''
  backing: tuple[str, ...] = ()  # summed into one backing stem
  solo: str = ''

  @property
  def is_stems(self) -> bool:
    return not self.mix


# ----------------------------------------------------------------------------------------- URLs


def split_inputs(inputs: str) -> list[str]:
  """'a, b,c' -> ['a', 'b', 'c'] (empty items dropped, ~ expanded for paths)."""
  return [os.path.expanduser(s.strip()) for s in inputs.split(',') if s.strip()]


def validate_url(url: str, allowed_hosts: Sequence[str]) -> str:
  """Returns `url` if it is http(s) and its host is (a subdomain of) an allowed host; else IngestError."""
  parts = urllib.parse.urlsplit(url.strip())
  if parts.scheme not in ('http', 'https'):
    raise IngestError(
        f'{url!r}: only http:// and https:// URLs are accepted (got scheme {parts.scheme or "none"!r}). '
        f'For files on disk use --config.source.kind=local.')
  host = (parts.hostname or '').lower()
  allowed = [h.lower().strip() for h in allowed_hosts if h.strip()]
  if not host or not any(host == h or host.endswith('.' + h) for h in allowed):
    raise IngestError(
        f'{url!r}: host {host or "(none)"!r} is not supported; allowed hosts are {allowed}. '
        f"To allow it, pass e.g. --config.source.allowed_hosts=\"('{host}',)\".")
  return url.strip()


def read_url_inputs(inputs: str, allowed_hosts: Sequence[str]) -> list[str]:
  """URLs from comma-separated `inputs`, where an item may also be a .txt file of URLs (one a line)."""
  urls = []
  for item in split_inputs(inputs):
    if '://' not in item and Path(item).is_file():
      lines = Path(item).read_text(encoding='utf-8').splitlines()
      urls += [line.strip() for line in lines if line.strip() and not line.strip().startswith('#')]
    elif '://' not in item and item.endswith('.txt'):
      raise IngestError(f'URL list {item!r} does not exist. Give URLs or a text file of URLs, one a line.')
    else:
      urls.append(item)
  if not urls:
    raise IngestError('No URLs given. Set --config.source.inputs=URL[,URL...] or a .txt file of URLs.')
  return [validate_url(u, allowed_hosts) for u in urls]


def ffmpeg_exe() -> str:
  """Path of the ffmpeg binary shipped by imageio-ffmpeg (no system ffmpeg needed)."""
  try:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()
  except (ImportError, RuntimeError) as e:
    raise IngestError(
        f'ffmpeg is needed to extract audio ({e}). Install it with `.venv/bin/pip install imageio-ffmpeg==0.8.1` '
        f'(it ships a static binary), or set IMAGEIO_FFMPEG_EXE to an ffmpeg on your system.') from e


class _YtDlpLog:
  """yt-dlp's logger: everything at DEBUG of the 'yt_dlp' logger. Its errors come back as the exception
  that `IngestError` words and the run's failure list records, so printing them too only repeats them."""
  _log = logging.getLogger('yt_dlp')

  def debug(self, msg: str) -> None:
    self._log.debug('%s', msg)

  info = warning = error = debug


def _ydl_options(socket_timeout_s: float, **extra) -> dict:
  options = dict(quiet=True, no_warnings=True, noprogress=True, logger=_YtDlpLog(), socket_timeout=socket_timeout_s,
                 retries=3)
  return {**options, **extra}


def _video_id(info: dict) -> str:
  extractor = info.get('extractor_key') or info.get('ie_key') or info.get('extractor') or 'url'
  if not info.get('id'):
    raise IngestError(f'yt-dlp returned no id for {info.get("url") or info.get("webpage_url")!r}.')
  return manifest.safe_id(f'{extractor.lower()}-{info["id"]}')


def expand_url(url: str, allowed_hosts: Sequence[str], *, socket_timeout_s: float = 30.0) -> list[Video]:
  """A video URL -> [Video]; a playlist URL -> one Video per entry (each entry URL is validated too)."""
  import yt_dlp

  validate_url(url, allowed_hosts)
  try:
    with yt_dlp.YoutubeDL(_ydl_options(socket_timeout_s, extract_flat='in_playlist')) as ydl:
      info = ydl.extract_info(url, download=False)
  except yt_dlp.utils.YoutubeDLError as e:
    raise IngestError(f'{url}: yt-dlp could not read it ({e}). Check the URL and your connection.') from e
  if info.get('_type') not in ('playlist', 'multi_video'):
    return [Video(_video_id(info), url)]
  videos = []
  for entry in info.get('entries') or ():
    if not entry:
      continue
    entry_url = entry.get('webpage_url') or entry.get('url') or ''
    videos.append(Video(_video_id(entry), validate_url(entry_url, allowed_hosts)))
  if not videos:
    raise IngestError(f'{url}: the playlist has no entries.')
  return videos


def download_audio(video: Video, downloads_dir: str | os.PathLike, *, socket_timeout_s: float = 30.0) -> Path:
  """Downloads `video`'s audio to <downloads_dir>/<recording_id>.wav (atomically; skipped if present)."""
  import yt_dlp

  downloads_dir = Path(downloads_dir)
  final = downloads_dir / f'{video.recording_id}.wav'
  if final.exists():
    return final
  downloads_dir.mkdir(parents=True, exist_ok=True)
  tmp_dir = Path(tempfile.mkdtemp(dir=downloads_dir, prefix=f'.{video.recording_id}.', suffix='.tmp'))
  try:
    options = _ydl_options(
        socket_timeout_s, format='bestaudio/best', noplaylist=True, restrictfilenames=True,
        outtmpl={'default': str(tmp_dir / 'audio.%(ext)s')}, ffmpeg_location=ffmpeg_exe(),
        postprocessors=[{'key': 'FFmpegExtractAudio', 'preferredcodec': 'wav'}])
    try:
      with yt_dlp.YoutubeDL(options) as ydl:
        ydl.download([video.url])
    except yt_dlp.utils.YoutubeDLError as e:
      raise IngestError(f'{video.url}: download failed ({e}).') from e
    wavs = sorted(tmp_dir.glob('*.wav'))
    if not wavs:
      raise IngestError(f'{video.url}: yt-dlp finished but wrote no WAV (found {sorted(os.listdir(tmp_dir))}).')
    os.replace(wavs[0], final)
    return final
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)


def remove_partial_downloads(downloads_dir: str | os.PathLike) -> None:
  """Deletes the temporary folders of downloads a killed run left behind."""
  for path in Path(downloads_dir).glob('.*.tmp'):
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------- files


def _unique_ids(paths_and_names: Iterable[tuple[str, str]], known: Mapping[str, str] | None = None
                ) -> dict[str, str]:
  """{recording_id: path}, ids from names via safe_id; clashes get a short hash of the path.

  known: {recording_id: path} of the output folder's earlier runs (manifest.recorded_sources). A path listed
  there keeps its id first, so a new input whose name clashes with it gets the hashed id instead of taking
  that id over (and being skipped as finished); whatever order the inputs come in.
  """
  names: dict[str, str] = {}
  for path, name in paths_and_names:
    names.setdefault(path, name)  # a file listed twice (by name and in its folder) is one recording
  owner = {path: rid for rid, path in (known or {}).items()}
  out = {owner[path]: path for path in names if path in owner}
  for path, name in names.items():
    if path in owner:
      continue
    rid = manifest.safe_id(name)
    if rid in out:
      rid = manifest.safe_id(f'{name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}')
    out[rid] = path
  return out


def list_local(inputs: str, extensions: Sequence[str], known: Mapping[str, str] | None = None) -> list[Recording]:
  """Audio files named in `inputs`, and those under folders named there (by extension, recursively);
  `known` as in _unique_ids."""
  exts = {'.' + e.lower().lstrip('.') for e in extensions}
  found: list[tuple[str, str]] = []
  for item in split_inputs(inputs):
    path = Path(item)
    if path.is_file():
      found.append((str(path.resolve()), path.name))
    elif path.is_dir():
      for f in sorted(path.rglob('*')):
        rel = f.relative_to(path)
        if f.is_file() and f.suffix.lower() in exts and not any(p.startswith('.') for p in rel.parts):
          found.append((str(f.resolve()), f'{path.resolve().name}/{rel}'))
    else:
      raise IngestError(f'{item!r} is neither a file nor a folder. Check --config.source.inputs.')
  if not found:
    raise IngestError(f'No audio files ({", ".join(sorted(exts))}) in {inputs!r}.')
  return [Recording(rid, path, mix=path) for rid, path in _unique_ids(found, known).items()]


def _single_root(inputs: str, layout: str) -> Path:
  roots = split_inputs(inputs)
  if len(roots) != 1 or not Path(roots[0]).is_dir():
    raise IngestError(f'The {layout} source takes one existing folder in --config.source.inputs, got {inputs!r}.')
  return Path(roots[0])


def list_stems(inputs: str, known: Mapping[str, str] | None = None) -> list[Recording]:
  """ROOT/<recording_id>/{backing,solo}.wav; a folder with only one of the two fails later, by name.
  `known` as in _unique_ids."""
  root = _single_root(inputs, 'stems').resolve()
  folders = [(str(d), d.name) for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
             if (d / 'backing.wav').exists() or (d / 'solo.wav').exists()]
  if not folders:
    raise IngestError(f'No <recording_id>/backing.wav + solo.wav folders under {root}.')
  return [Recording(rid, d, backing=(str(Path(d) / 'backing.wav'),), solo=str(Path(d) / 'solo.wav'))
          for rid, d in _unique_ids(folders, known).items()]


def list_filosax(inputs: str) -> list[Recording]:
  """FiloSax: one Recording per (participant, piece) with Sax.wav, paired with Backing/NN/*.wav."""
  root = _single_root(inputs, 'filosax')
  if not (root / 'Backing').is_dir():
    raise IngestError(f'{root} has no Backing/ folder; expected the FiloSax layout Backing/NN/*.wav.')
  recordings = []
  for participant in sorted(root.glob('Participant*')):
    match = re.search(r'(\d+)', participant.name)
    if not participant.is_dir() or not match:
      continue
    for piece in sorted(p for p in participant.iterdir() if p.is_dir()):
      sax = piece / 'Sax.wav'
      if not sax.exists():
        continue
      backing = tuple(str(f) for f in sorted((root / 'Backing' / piece.name).glob('*.wav')))
      rid = manifest.safe_id(f'filosax_p{int(match.group(1))}_{piece.name}')
      recordings.append(Recording(rid, str(piece), backing=backing, solo=str(sax)))
  if not recordings:
    raise IngestError(f'No "Participant k/NN/Sax.wav" files under {root}.')
  return recordings


def list_recordings(kind: str, inputs: str, extensions: Sequence[str], known: Mapping[str, str] | None = None
                    ) -> list[Recording]:
  """The Recordings of a files source (local, stems, filosax); youtube goes through expand_url. known:
  {recording_id: source} of the output folder's earlier runs, which keep their ids (_unique_ids)."""
  if kind == 'local':
    return list_local(inputs, extensions, known)
  if kind == 'stems':
    return list_stems(inputs, known)
  if kind == 'filosax':
    return list_filosax(inputs)
  raise IngestError(f'Unknown source kind {kind!r}; use one of {KINDS}.')
