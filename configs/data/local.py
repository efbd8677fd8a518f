"""Local audio files or folders (any format soundfile or ffmpeg reads) -> Demucs -> token clips.

`python -m preprocessing --config=configs/data/local.py --config.source.inputs=~/music/solos`
"""

from configs.data import base


def get_config():
  c = base.get_config()
  c.source.kind = 'local'
  c.source.inputs = 'data/audio'
  c.output_dir = 'data/tokens/local'
  return c
