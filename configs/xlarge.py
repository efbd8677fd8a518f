"""SaxGPT xlarge: d_model 768, 12 heads, 12/12 layers, ff 3072 (~210M parameters)."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.d_model = 768
  c.model.num_heads = 12
  c.model.num_encoder_layers = 12
  c.model.num_decoder_layers = 12
  c.model.dim_feedforward = 3072
  return c
