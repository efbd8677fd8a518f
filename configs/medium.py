"""SaxGPT medium: d_model 384, 6 heads, 6/6 layers, ff 1536 (~31M parameters)."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.d_model = 384
  c.model.num_heads = 6
  c.model.num_encoder_layers = 6
  c.model.num_decoder_layers = 6
  c.model.dim_feedforward = 1536
  return c
