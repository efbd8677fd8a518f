"""The offline demo: paired stems from preprocessing/synth.py, seeded random EnCodec, short windows.

`python -m preprocessing --config=configs/data/synth.py --config.source.inputs=runs/demo/stems`
"""

from configs.data import base


def get_config():
  c = base.get_config()
  c.source.kind = 'stems'
  c.source.inputs = 'runs/demo/stems'
  c.output_dir = 'runs/demo/tokens'
  c.tfds_data_dir = 'runs/demo/tfds'
  c.codec.weights = 'random:0'
  # Short pieces: 2 s frames split the solo at rests of about 2 s or more; phrases of >= 4 s are kept.
  c.select.frame_s = 2.0
  c.select.stride_s = 0.2
  c.select.min_window_s = 4.0
  c.augment.pitch_semitones = ()
  c.augment.tempo_rates = ()
  return c
