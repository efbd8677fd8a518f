"""Every default of saxgpt-jax. Presets import this file and change only what differs.

Use: `python -m saxgpt_jax.train --config=configs/large.py --config.model.d_model=768`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- Model: the original SaxGPT encoder-decoder (see shared/fixtures/upstream_parity/README.md).
  c.model = ml_collections.ConfigDict()
  c.model.num_codebooks = 4  # K: EnCodec 32 kHz streams
  c.model.codebook_size = 2048  # V: codes per codebook; the heads predict these
  c.model.padding_idx = 2048  # extra embedding row: delay padding / start token
  c.model.d_model = 512
  c.model.num_heads = 8
  c.model.num_encoder_layers = 8
  c.model.num_decoder_layers = 8
  c.model.dim_feedforward = 2048
  c.model.dropout = 0.1  # on embeddings, residual branches and the feed-forward hidden layer
  # Dropout on attention probabilities. The PyTorch reference, like torch's nn.MultiheadAttention, applies
  # `dropout` there as well: set 0.1 to reproduce that regularisation. 0 keeps fused attention (cuDNN
  # flash attention on GPU) and saves a [B, N, T, S] random mask per attention in training.
  c.model.attention_dropout = 0.0
  c.model.activation = 'gelu'  # 'relu' or 'gelu' (exact erf)
  c.model.norm_first = True  # pre-norm
  c.model.scale_embeddings = True  # summed embeddings x sqrt(d_model)
  c.model.max_seq_len = 1505  # delayed positions: 1500 frames + K + 1
  c.model.dtype = 'bfloat16'  # compute dtype
  c.model.param_dtype = 'float32'
  # '': cuDNN flash attention on GPU in a 16-bit dtype, written-out einsum attention elsewhere (float32,
  # CPU, TPU); 'cudnn' forces flash attention; 'xla' always writes it out.
  c.model.attention_impl = ''
  # Rematerialise each encoder/decoder layer in training (a lax.scan over the layers under jax.checkpoint,
  # model.SaxGPT._run_layers): the backward pass recomputes a layer's activations instead of keeping them.
  # Turn on when a batch does not fit (large 2 x 1500 on CPU: 5x less temporary memory, ~14% slower).
  c.model.remat = False

  # --- Data: TFDS `saxgpt_tokens` ArrayRecord shards read with grain (saxgpt_jax/data.py).
  c.data = ml_collections.ConfigDict()
  c.data.name = 'saxgpt_tokens'
  c.data.data_dir = 'data/tfds'  # TFDS data_dir holding saxgpt_tokens/<version>/
  c.data.seq_len = 1500  # frames per training window (before the delay pattern)
  c.data.stride = 300  # window stride for fixed windows
  c.data.random_offsets = False  # True: one random window start per clip-slot and epoch
  c.data.seed = 0
  c.data.codec = 'facebook/encodec_32khz'  # tokenizer of the shards; generate/evaluate decode audio with it
  c.data.worker_count = 2  # grain worker processes (0 = in-process)
  c.data.prefetch_buffer_size = 4
  c.data.read_threads = 4  # grain reader threads per process (or per worker)

  # --- Optimisation (original defaults).
  c.train = ml_collections.ConfigDict()
  c.train.seed = 0
  c.train.global_batch_size = 32
  c.train.num_microbatches = 1  # gradient accumulation inside one compiled step
  c.train.num_steps = 100_000
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 2_000
  c.train.min_learning_rate = 1e-6
  c.train.b1 = 0.9
  c.train.b2 = 0.98
  c.train.eps = 1e-9
  c.train.weight_decay = 0.01
  c.train.grad_clip_norm = 1.0
  # JAX PRNG of the dropout masks: 'threefry2x32' (JAX's default, the same bits everywhere), 'philox4x32'
  # (Random123's Philox, as cuRAND and PyTorch use; also the same bits everywhere; XLA recomputes its bits
  # where they are used instead of storing them: 15% less activation memory in the large CPU step, the same
  # step time, a longer compile; BENCHMARKS.md), 'rbg' (XLA's RngBitGenerator: not bit-identical across
  # backends or XLA versions) or 'unsafe_rbg'.
  c.train.dropout_rng = 'threefry2x32'
  c.train.log_every = 50
  c.train.eval_every = 1_000
  c.train.eval_batches = 50  # 0 = the whole validation split
  c.train.checkpoint_every = 1_000
  c.train.keep_latest = 3
  c.train.keep_best = 1  # by validation loss

  # --- Device mesh (data, fsdp, tensor); -1 fills the remaining devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # --- Sampling defaults for generate/evaluate.
  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0
  c.sample.top_k = 250  # 0 = off
  c.sample.top_p = 0.0  # 0 = off
  c.sample.greedy = False
  c.sample.window_stride = 750  # long-form generation: new frames per sliding window

  c.init_from = ''  # checkpoint directory to start training from (converted or earlier run)
  return c
