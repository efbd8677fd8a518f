"""SaxGPT large: d_model 512, 8 heads, 8/8 layers, ff 2048 (~67M parameters)."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.d_model = 512
  c.model.num_heads = 8
  c.model.num_encoder_layers = 8
  c.model.num_decoder_layers = 8
  c.model.dim_feedforward = 2048
  return c
