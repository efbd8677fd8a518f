"""Source separation with Demucs 4: a mix -> (solo, rhythm) stems, mono float32 [T] at 32 kHz.

Solo = the sources named in SOLO_SOURCES that the model has (vocals + other; htdemucs_6s puts guitar and
piano in their own stems, which are rhythm section here); rhythm = every other source the model has.
Stems are picked by the model's `sources` names, never by index.

Weights: `Separator.load(name)` reads the Hugging Face cache (repo adefossez/<HTDemucs-6s, ...>) first and
downloads only when online; `repo=DIR` reads a local folder holding either the Hugging Face layout
(`<name>.yaml` + `<signature>.safetensors`) or demucs' legacy layout (`<name>.yaml` + `<signature>-<hash>.th`).
'demucs_unittest' (a small random 4-source model from the package) needs no weights.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path

import numpy as np
import torch

from preprocessing import audio

DEFAULT_MODEL = 'htdemucs_6s'
SOLO_SOURCES = ('vocals', 'other')
OUTPUT_SR = 32000
# Seeding torch's and Python's global generators is only reproducible if one thread does it at a time (Beam's
# in_memory and multi_threading modes run several workers in one process).
_GLOBAL_RNG_LOCK = threading.Lock()


class SeparatorError(RuntimeError):
  """A separation model that cannot be loaded or used; the message says how to fix it."""


def _offline_help(name: str, cause: str) -> str:
  from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name

  hub_repo = f'{DEFAULT_NAMESPACE}/{hf_repo_name(name)}'
  return (
      f'Cannot load Demucs model {name!r}: {cause}.\n'
      f'On a machine with internet access, download it:\n'
      f'  huggingface-cli download {hub_repo} --local-dir DIR\n'
      f'or in Python:\n'
      f'  from huggingface_hub import snapshot_download; snapshot_download("{hub_repo}", local_dir="DIR")\n'
      f'then copy DIR here and point at it with --config.demucs.repo=DIR (Separator.load({name!r}, repo=DIR)), '
      f'or run `python -c "from demucs.pretrained import get_model; get_model({name!r})"` there and copy the '
      f'Hugging Face cache (~/.cache/huggingface/hub). For tests, --config.demucs.name=demucs_unittest '
      f'runs a small random model.')


def _load_bag(name: str, files: dict[str, Path]):
  """BagOfModels from `<name>.yaml` and one safetensors file per signature (the Hugging Face layout)."""
  import yaml
  from demucs.apply import BagOfModels
  from demucs.hf import load_safetensors_model

  bag = yaml.safe_load(files['yaml'].read_text())
  return BagOfModels([load_safetensors_model(files[sig]) for sig in bag['models']], bag.get('weights'),
                     bag.get('segment'))


def _from_folder(name: str, repo: Path):
  if not repo.is_dir():
    raise SeparatorError(_offline_help(name, f'--config.demucs.repo={repo} is not a folder'))
  yaml_path = repo / f'{name}.yaml'
  if not yaml_path.exists():
    raise SeparatorError(_offline_help(name, f'{repo} has no {name}.yaml'))
  import yaml

  signatures = yaml.safe_load(yaml_path.read_text()).get('models', [])
  if signatures and all((repo / f'{sig}.safetensors').exists() for sig in signatures):
    return _load_bag(name, {'yaml': yaml_path, **{sig: repo / f'{sig}.safetensors' for sig in signatures}})
  from demucs.pretrained import get_model
  from demucs.repo import ModelLoadingError

  try:
    return get_model(name, repo=repo)
  except ModelLoadingError as e:
    raise SeparatorError(_offline_help(name, f'{repo} lacks the weights {name}.yaml lists ({e})')) from e


def _from_hub(name: str):
  from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
  from huggingface_hub import hf_hub_download
  from huggingface_hub.errors import LocalEntryNotFoundError

  hub_repo = f'{DEFAULT_NAMESPACE}/{hf_repo_name(name)}'
  try:
    files = {'yaml': Path(hf_hub_download(hub_repo, f'{name}.yaml', local_files_only=True))}
    import yaml

    for sig in yaml.safe_load(files['yaml'].read_text())['models']:
      files[sig] = Path(hf_hub_download(hub_repo, f'{sig}.safetensors', local_files_only=True))
    return _load_bag(name, files)
  except LocalEntryNotFoundError:
    pass
  from preprocessing.codec import not_downloadable

  if why := not_downloadable():
    raise SeparatorError(_offline_help(name, why))
  from demucs.pretrained import get_model

  try:
    return get_model(name)  # the hub, then demucs' legacy download site
  except (Exception, SystemExit) as e:  # demucs reports some failures with sys.exit
    raise SeparatorError(_offline_help(name, f'not cached and the download failed ({e!r})')) from e


@dataclasses.dataclass
class Separator:
  """Demucs wrapper: `separate(wave [T] or [C, T], sr) -> (solo [T], rhythm [T])` at 32 kHz."""

  model: torch.nn.Module = dataclasses.field(repr=False)  # demucs Model or BagOfModels
  name: str
  shifts: int = 1
  overlap: float = 0.25
  segment: float | None = None
  device: str = 'cpu'
  seed: int = 0  # seeds the random time shifts, so a rerun gives the same stems

  @classmethod
  def load(cls, name: str = DEFAULT_MODEL, repo: str | Path | None = None, shifts: int = 1, overlap: float = 0.25,
           segment: float | None = None, device: str = 'cpu', seed: int = 0) -> 'Separator':
    """Loads a pretrained Demucs by name (HF cache, then download) or from the folder `repo`.

    'demucs_unittest' builds demucs' small random test model, with weights seeded by `seed`.
    """
    if name == 'demucs_unittest':
      from demucs.pretrained import get_model

      with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_model(name)
    elif repo is not None:
      model = _from_folder(name, Path(repo).expanduser())
    else:
      model = _from_hub(name)
    separator = cls(model.eval(), name, shifts, overlap, segment, device, seed)
    separator.solo_sources  # raises SeparatorError when the model has no solo or no rhythm source
    return separator

  @property
  def sources(self) -> list[str]:
    return list(self.model.sources)

  @property
  def solo_sources(self) -> list[str]:
    solo = [s for s in self.sources if s in SOLO_SOURCES]
    if not solo or len(solo) == len(self.sources):
      raise SeparatorError(
          f'Demucs model {self.name!r} has sources {self.sources}; need some of {list(SOLO_SOURCES)} for the '
          f'solo and at least one other source for the rhythm. Use htdemucs_6s (default) or htdemucs.')
    return solo

  def separate_sources(self, wave: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """float [T] or [C, T] at `sr` -> {source name: float32 [C_model, T_model]} at the model's rate."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1 or wave.shape[0] != self.model.audio_channels:
      wave = np.repeat(audio.to_mono(wave)[None], self.model.audio_channels, axis=0)  # mono -> stereo
    wave = audio.resample(wave, sr, self.model.samplerate)
    mix = torch.from_numpy(wave)
    reference = mix.mean(0)
    mean, std = reference.mean(), reference.std()
    if wave.shape[-1] == 0 or not std > 1e-8:  # silence: every stem is silent too
      return {s: np.zeros_like(wave) for s in self.sources}
    from demucs.apply import apply_model

    with _GLOBAL_RNG_LOCK:  # apply_model draws its shifts from Python's global `random`
      state = random.getstate()
      random.seed(self.seed)
      try:
        stems = apply_model(self.model, ((mix - mean) / std)[None], shifts=self.shifts, split=True,
                            overlap=self.overlap, segment=self.segment, device=self.device, progress=False)[0]
      finally:
        random.setstate(state)
    stems = (stems * std + mean / len(self.sources)).cpu().numpy()  # [S, C, T]; the stems sum to the mix
    return dict(zip(self.sources, stems))

  def separate(self, wave: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """float [T] or [C, T] at `sr` -> (solo, rhythm), mono float32 [T'] at 32 kHz, T' = round(T * 32000 / sr)."""
    num_samples = np.asarray(wave).shape[-1]
    stems = self.separate_sources(wave, sr)
    solo_names = self.solo_sources
    solo = sum(stems[s] for s in solo_names)
    rhythm = sum(stems[s] for s in self.sources if s not in solo_names)
    out_len = int(np.floor(num_samples * OUTPUT_SR / sr + 0.5))
    return tuple(_fit(audio.resample(audio.to_mono(x), self.model.samplerate, OUTPUT_SR), out_len)
                 for x in (solo, rhythm))


def _fit(wave: np.ndarray, length: int) -> np.ndarray:
  """Trims or zero-pads [T] to `length` (resampling twice can be off by a sample)."""
  return np.pad(wave[:length], (0, max(0, length - wave.shape[0])))
