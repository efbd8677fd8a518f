"""FiloSax (Backing/NN/*.wav + Participant k/NN/Sax.wav): already separated, no Demucs.

`python -m preprocessing --config=configs/data/filosax.py --config.source.inputs=/data/FiloSax`
"""

from configs.data import base


def get_config():
  c = base.get_config()
  c.source.kind = 'filosax'
  c.source.inputs = 'data/FiloSax'
  c.output_dir = 'data/tokens/filosax'
  return c
