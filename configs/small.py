"""SaxGPT small: d_model 256, 4 heads, 6/6 layers, ff 1024 (~15M parameters)."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.num_encoder_layers = 6
  c.model.num_decoder_layers = 6
  c.model.dim_feedforward = 1024
  return c
