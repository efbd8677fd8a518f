"""Every default of the preprocessing pipeline (`python -m preprocessing`). Source presets import this.

Use: `python -m preprocessing --config=configs/data/local.py --config.source.inputs=~/music`.
Defaults follow the original SaxGPT data config (RMS 0.05, frame 10 s, stride 0.2 s, windows >= 30 s).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- Where audio comes from (preprocessing/ingest.py).
  c.source = ml_collections.ConfigDict()
  c.source.kind = 'local'  # 'youtube' | 'local' | 'stems' | 'filosax'
  # Comma-separated. youtube: video/playlist URLs and/or .txt files of URLs (one a line, # comments);
  # local: audio files and folders (searched recursively); stems/filosax: one root folder each.
  c.source.inputs = ''
  # youtube: hosts a URL may name (a host or any subdomain of it); anything else is rejected.
  c.source.allowed_hosts = ('youtube.com', 'youtu.be')
  c.source.socket_timeout_s = 30.0
  # local: extensions listed from folders (a file named directly is always tried).
  c.source.extensions = ('wav', 'flac', 'mp3', 'ogg', 'opus', 'm4a', 'aac', 'aiff', 'aif', 'webm', 'mp4', 'wma')

  # --- Output. The run is resumable: rerun with the same output_dir to finish or extend it.
  c.output_dir = 'data/tokens'  # manifest.jsonl + clips/ (preprocessing/manifest.py) + failures.jsonl
  c.work_dir = ''  # downloads and scratch; '' = <output_dir>/work
  c.build_tfds = True  # finish by building the TFDS `saxgpt_tokens` dataset
  c.tfds_data_dir = 'data/tfds'
  c.split_fractions = (0.8, 0.1, 0.1)  # train / validation / test, split by recording
  c.split_seed = 0

  # --- Audio preparation (preprocessing/audio.py): before and after separation.
  c.audio = ml_collections.ConfigDict()
  c.audio.sample_rate = 32000
  c.audio.target_lufs = -14.0

  # --- Source separation (preprocessing/separate.py); skipped for stems sources.
  c.demucs = ml_collections.ConfigDict()
  c.demucs.name = 'htdemucs_6s'  # solo = vocals + other; rhythm = every other source
  c.demucs.repo = ''  # local folder of demucs weights ('' = torch hub cache / download)
  c.demucs.shifts = 1
  c.demucs.overlap = 0.25
  c.demucs.segment = 0.0  # seconds; 0 = the model's default
  c.demucs.device = 'cpu'

  # --- Selection (preprocessing/select.py): sliding RMS windows on the solo stem.
  c.select = ml_collections.ConfigDict()
  c.select.threshold = 0.05
  c.select.frame_s = 10.0
  c.select.stride_s = 0.2
  c.select.min_window_s = 30.0

  # --- Augmentation (preprocessing/augment.py): each setting is a separate copy of every clip.
  c.augment = ml_collections.ConfigDict()
  c.augment.pitch_semitones = (-2, 2)  # () = none
  c.augment.tempo_rates = (0.9, 1.1)  # () = none

  # --- Tokenizer (preprocessing/codec.py).
  c.codec = ml_collections.ConfigDict()
  c.codec.weights = 'facebook/encodec_32khz'  # hub id, local folder, or 'random:SEED'
  c.codec.chunk_s = 25.0  # encode in chunks so memory stays flat on long audio
  c.codec.context_s = 1.0  # extra audio on each side of a chunk
  c.codec.device = 'cpu'

  # --- Beam. Anything else goes through --beam_pipeline_options (e.g. --runner=DataflowRunner ...).
  c.beam = ml_collections.ConfigDict()
  c.beam.runner = 'DirectRunner'
  c.beam.direct_running_mode = 'multi_processing'  # 'in_memory' | 'multi_threading' | 'multi_processing'
  c.beam.num_workers = 2
  # torch threads per worker; 0 = cores / DirectRunner worker processes. On AVX-512 CPUs a different thread
  # count can move a near-tied EnCodec code (about 1 in 400 here); fix it to compare runs token for token.
  c.torch_threads = 0
  return c
