"""A tiny model and short windows for tests and the offline demo (runs on 2 CPU cores)."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.num_encoder_layers = 2
  c.model.num_decoder_layers = 2
  c.model.dim_feedforward = 128
  c.model.max_seq_len = 133  # 128 frames + K + 1
  c.model.dtype = 'float32'
  c.data.seq_len = 128
  c.data.stride = 64
  c.data.worker_count = 0
  c.train.global_batch_size = 8
  c.train.num_steps = 300
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.eval_batches = 4
  c.train.checkpoint_every = 100
  c.sample.window_stride = 64
  return c
