"""SaxGPT xsmall: d_model 128, 4 heads, 4/4 layers, ff 512 (~4M parameters)."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.num_encoder_layers = 4
  c.model.num_decoder_layers = 4
  c.model.dim_feedforward = 512
  return c
