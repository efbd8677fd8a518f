"""YouTube videos or playlists -> Demucs -> token clips.

`python -m preprocessing --config=configs/data/youtube.py --config.source.inputs=URL[,URL|urls.txt]`
"""

from configs.data import base


def get_config():
  c = base.get_config()
  c.source.kind = 'youtube'
  c.source.inputs = 'urls.txt'
  c.output_dir = 'data/tokens/youtube'
  return c
