"""The JAX model computes what the original PyTorch SaxGPT computes (fixtures + random configs)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from saxgpt_jax import convert_torch
from saxgpt_jax import model as model_lib


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope='module')
def fixture_models(parity_dirs):
  return {d.name: (convert_torch.load_torch_checkpoint(str(d / 'checkpoint.pt')), np.load(d / 'reference.npz'))
          for d in parity_dirs}


def test_fixture_memory_and_logits_match(fixture_models):
  for name, (model, ref) in fixture_models.items():
    memory = model.encode(jnp.asarray(ref['src']))
    logits = model(jnp.asarray(ref['src']), jnp.asarray(ref['tgt_in']))
    assert logits.shape == ref['logits'].shape, name
    assert rel_err(memory, ref['memory']) <= 1e-5, name
    assert rel_err(logits, ref['logits']) <= 1e-5, name


TORCH_CONFIGS = [
    dict(d_model=48, nhead=3, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=80,
         activation='gelu', norm_first=True, scale_embeddings=False),
    dict(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=64,
         activation='relu', norm_first=False, scale_embeddings=True),
]


@pytest.mark.parametrize('arch', TORCH_CONFIGS, ids=['prenorm-gelu-noscale', 'postnorm-relu-scale'])
def test_random_torch_models_match_with_padding_mask(arch):
  """Sizes, activations and norm placements beyond the fixtures, with a key-padding mask on the backing."""
  torch = pytest.importorskip('torch')
  from saxgpt_jax.bench import torch_reference

  torch_cfg = dict(vocab_size=2049, num_codebooks=4, max_seq_len=40, padding_idx=2048, dropout=0.1, **arch)
  torch.manual_seed(0)
  ref = torch_reference.SaxGPTTorch(torch_cfg).eval()
  jax_model = convert_torch.load_into(
      model_lib.SaxGPT(convert_torch.model_config_from_torch(torch_cfg), rngs=nnx.Rngs(params=1)),
      {k: v.numpy() for k, v in ref.state_dict().items()})
  rng = np.random.default_rng(0)
  src = rng.integers(0, 2049, (2, 4, 20))
  tgt = rng.integers(0, 2049, (2, 4, 12))
  mask = np.ones((2, 20), bool)
  mask[1, 14:] = False
  with torch.no_grad():
    expected = ref(torch.as_tensor(src), torch.as_tensor(tgt), torch.as_tensor(mask)).numpy()
  got = jax_model(jnp.asarray(src), jnp.asarray(tgt), jnp.asarray(mask))
  assert rel_err(got, expected) <= 1e-5


def tiny_model(**overrides):
  kwargs = dict(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64,
                max_seq_len=24, dtype='float32')
  cfg = model_lib.ModelConfig(**{**kwargs, **overrides})
  return model_lib.SaxGPT(cfg, rngs=nnx.Rngs(params=0))


def test_padding_mask_hides_padded_backing_frames():
  model = tiny_model()
  rng = np.random.default_rng(1)
  src = rng.integers(0, 2048, (1, 4, 16))
  tgt = rng.integers(0, 2048, (1, 4, 8))
  mask = np.arange(16)[None] < 10
  other = src.copy()
  other[:, :, 10:] = rng.integers(0, 2048, (1, 4, 6))
  a = model(jnp.asarray(src), jnp.asarray(tgt), jnp.asarray(mask))
  b = model(jnp.asarray(other), jnp.asarray(tgt), jnp.asarray(mask))
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  c = model(jnp.asarray(other), jnp.asarray(tgt))  # without the mask the padded frames matter
  assert not np.allclose(a, c, atol=1e-4)


def test_attention_impl_picks_cudnn_only_on_gpu_in_16_bit():
  on_gpu = jax.default_backend() == 'gpu'
  for impl, dtype, expected in [('', 'bfloat16', on_gpu), ('', 'float32', False), ('xla', 'bfloat16', False),
                                ('cudnn', 'float32', True)]:
    cfg = model_lib.ModelConfig(d_model=32, num_heads=2, dtype=dtype, attention_impl=impl)
    assert model_lib._uses_cudnn(cfg) == expected, (impl, dtype)


@pytest.mark.parametrize('kernel', ['xla-stand-in', 'cudnn'])
def test_flash_attention_path_matches_written_out_attention_with_prefix_masks(kernel, monkeypatch):
  """Loss and gradients through the flash-attention path (odd lengths padded to even, key mask as
  lengths) equal the einsum path's. 'cudnn' runs cuDNN itself and needs a GPU; 'xla-stand-in' runs the
  same path with jax.nn's XLA kernel in float32, so the padding and lengths are checked on any machine."""
  on_gpu = jax.default_backend() == 'gpu'
  if kernel == 'cudnn' and not on_gpu:
    pytest.skip('cuDNN flash attention needs a GPU (run with JAX_PLATFORMS=cuda on one)')
  if kernel == 'xla-stand-in':
    sdpa = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, 'dot_product_attention',
                        lambda *a, implementation=None, **kw: sdpa(*a, implementation='xla', **kw))
  dtype = 'bfloat16' if kernel == 'cudnn' else 'float32'
  overrides = dict(d_model=64, num_heads=2, num_encoder_layers=2, num_decoder_layers=2, max_seq_len=40,
                   dtype=dtype, dropout=0.0)
  flash, written = tiny_model(attention_impl='cudnn', **overrides), tiny_model(attention_impl='xla', **overrides)
  rng = np.random.default_rng(7)
  src = jnp.asarray(rng.integers(0, 2048, (3, 4, 37)))  # odd S and T, as 1505
  tgt = jnp.asarray(rng.integers(0, 2048, (3, 4, 29)))
  mask = jnp.asarray(np.arange(37)[None] < np.array([[37], [21], [0]]))  # full, prefix, no real frame

  def loss_and_grads(model):
    def loss(m):
      logits, unmasked = m(src, tgt, mask), m(src, tgt)  # key lengths from the mask / none at all
      return jnp.mean(jax.nn.log_softmax(logits[:2])[..., 5]) + jnp.mean(jax.nn.log_softmax(unmasked)[..., 9]), logits
    (value, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return value, logits, jax.tree.leaves(grads)

  # float32 matmuls in full precision (on a GPU they are TF32 by default, ~1e-3 apart between the paths)
  with jax.default_matmul_precision('highest' if dtype == 'float32' else None):
    value_f, logits_f, grads_f = loss_and_grads(flash)
    value_w, logits_w, grads_w = loss_and_grads(written)
  tol = 2e-2 if dtype == 'bfloat16' else 1e-5
  assert np.isfinite(np.asarray(logits_f)).all()
  assert rel_err(logits_f[:2], logits_w[:2]) < tol  # the row without real frames differs: its targets are padding
  assert abs(float(value_f) - float(value_w)) <= tol * abs(float(value_w))
  for gf, gw in zip(grads_f, grads_w, strict=True):
    assert np.isfinite(np.asarray(gf)).all()
    assert rel_err(gf, gw) < 2.5 * tol
  with jax.default_matmul_precision('highest' if dtype == 'float32' else None):
    memory = flash.encode(src, mask)  # the even-padded encoder (SaxGPT._encode), sliced back to S
    assert memory.shape == (3, 37, 64) and rel_err(memory[:2], written.encode(src, mask)[:2]) < tol


def test_bfloat16_compute_keeps_float32_params():
  model = tiny_model()
  bf16 = nnx.merge(*nnx.split(tiny_model(dtype='bfloat16')))
  nnx.update(bf16, nnx.state(model, nnx.Param))
  for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
    assert leaf.dtype == jnp.float32
  rng = np.random.default_rng(2)
  src, tgt = jnp.asarray(rng.integers(0, 2048, (2, 4, 16))), jnp.asarray(rng.integers(0, 2048, (2, 4, 8)))
  lo, hi = bf16(src, tgt), model(src, tgt)
  assert lo.dtype == jnp.float32
  assert 0 < rel_err(lo, hi) < 0.05  # bf16 matmuls: close, not identical


def test_dropout_only_in_training_and_seeded():
  model = tiny_model(dropout=0.5)
  src, tgt = jnp.zeros((1, 4, 8), jnp.int32), jnp.ones((1, 4, 8), jnp.int32)
  eval_out = model(src, tgt)
  np.testing.assert_array_equal(eval_out, model(src, tgt))
  t1 = model(src, tgt, deterministic=False, rngs=nnx.Rngs(dropout=3))
  t2 = model(src, tgt, deterministic=False, rngs=nnx.Rngs(dropout=3))
  t3 = model(src, tgt, deterministic=False, rngs=nnx.Rngs(dropout=4))
  np.testing.assert_array_equal(t1, t2)
  assert not np.allclose(t1, t3) and not np.allclose(t1, eval_out)


def test_attention_dropout_path_computes_attention_and_drops_probabilities():
  rng = np.random.default_rng(3)
  src = jnp.asarray(rng.integers(0, 2048, (2, 4, 10)))
  tgt = jnp.asarray(rng.integers(0, 2048, (2, 4, 8)))
  mask = jnp.asarray(np.arange(10)[None] < np.array([[10], [6]]))
  base = tiny_model(dropout=0.0)
  reference = base(src, tgt, mask)
  # A negligible rate takes the written-out path (causal and padding masks, scale) and keeps everything.
  near_zero = tiny_model(dropout=0.0, attention_dropout=1e-9)
  got = near_zero(src, tgt, mask, deterministic=False, rngs=nnx.Rngs(dropout=0))
  assert rel_err(got, reference) <= 1e-5
  heavy = tiny_model(dropout=0.0, attention_dropout=0.5)
  np.testing.assert_array_equal(heavy(src, tgt, mask), reference)  # inference: no dropout
  a = heavy(src, tgt, mask, deterministic=False, rngs=nnx.Rngs(dropout=1))
  assert rel_err(a, reference) > 1e-2
  np.testing.assert_array_equal(a, heavy(src, tgt, mask, deterministic=False, rngs=nnx.Rngs(dropout=1)))


def test_inference_on_cpu_runs_one_row_at_a_time_with_the_same_outputs(monkeypatch):
  """On XLA:CPU, inference `encode` and the teacher-forced forward map over the batch (less fresh memory per
  pass): memory and logits equal the batched pass's, with each row's own key mask, and without a mask."""
  model = tiny_model(num_encoder_layers=2)
  rng = np.random.default_rng(11)
  src = jnp.asarray(rng.integers(0, 2048, (3, 4, 17)))
  tgt = jnp.asarray(rng.integers(0, 2048, (3, 4, 13)))
  mask = jnp.asarray(np.arange(17)[None] < np.array([[17], [9], [0]]))
  with pytest.raises(ValueError, match=r'got shape \(3, 3, 17\)'):  # checked on the whole batch
    model.encode(src[:, :3])
  with pytest.raises(ValueError, match=r'tgt must be .* got shape \(3, 3, 13\)'):
    model(src, tgt[:, :3])
  for run in (lambda m: model.encode(src, m), lambda m: model(src, tgt, m)):
    assert 'scan' in str(jax.make_jaxpr(run)(mask))  # the map is taken here
    one_at_a_time = [run(mask), run(None)]
    assert not np.allclose(one_at_a_time[0][1], one_at_a_time[1][1], atol=1e-4)  # row 1's padding is masked
    with monkeypatch.context() as patch:
      patch.setattr(model_lib, '_one_row_at_a_time', lambda *a: False)
      assert 'scan' not in str(jax.make_jaxpr(lambda m: run(m))(mask))  # a new trace, not the cached one
      for got, m in zip(one_at_a_time, (mask, None)):
        assert rel_err(got, run(m)) <= 1e-5


def test_one_row_attention_in_query_blocks_equals_one_block(monkeypatch):
  """One row's attention runs in blocks of queries, a causal block reading keys only up to its last query:
  encode and the teacher-forced forward (blocks of 5 over 17 frames and 13 positions) equal one block's,
  with a key mask, with one that hides every frame, and without."""
  model = tiny_model(num_encoder_layers=2, num_decoder_layers=2)
  rng = np.random.default_rng(12)
  src, tgt = jnp.asarray(rng.integers(0, 2048, (1, 4, 17))), jnp.asarray(rng.integers(0, 2048, (1, 4, 13)))
  masks = (None, jnp.asarray(np.arange(17)[None] < 9), jnp.zeros((1, 17), bool))
  for run in (lambda m: model.encode(src, m), lambda m: model(src, tgt, m)):
    dots = lambda: str(jax.make_jaxpr(lambda m: run(m))(masks[1])).count('dot_general')  # a new trace each time
    one_block = [run(m) for m in masks]
    fewer = dots()
    with monkeypatch.context() as patch:
      patch.setattr(model_lib, 'ONE_ROW_QUERY_BLOCK', 5)
      assert dots() > fewer  # the blocks are taken
      for m, want in zip(masks, one_block):
        assert rel_err(run(m), want) <= 1e-6
  assert not np.allclose(one_block[1], one_block[2], atol=1e-4)  # the masks matter


def _training_loss_grad(model):
  """jitted (params, src, tgt, mask, dropout key) -> (loss, grads) of a training-mode forward pass."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, src, tgt, mask, key):
    logits = nnx.merge(graphdef, params, rest)(src, tgt, mask, deterministic=False, rngs=nnx.Rngs(dropout=key))
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])

  return params, jax.jit(jax.value_and_grad(loss))


def test_remat_scans_the_layers_with_the_same_gradients_and_less_memory():
  rng = np.random.default_rng(4)
  src, tgt = jnp.asarray(rng.integers(0, 2048, (2, 4, 96))), jnp.asarray(rng.integers(0, 2048, (2, 4, 96)))
  mask = jnp.asarray(np.arange(96)[None] < np.array([[96], [70]]))
  key0 = jax.random.key(0)
  size = dict(num_encoder_layers=3, num_decoder_layers=3, max_seq_len=96, dropout=0.0)
  params, plain = _training_loss_grad(tiny_model(**size))
  _, remat = _training_loss_grad(tiny_model(remat=True, **size))
  (loss, grads), (loss_r, grads_r) = plain(params, src, tgt, mask, key0), remat(params, src, tgt, mask, key0)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g_r, g, rtol=1e-4, atol=1e-7)
  # Memory per extra layer pair, 3 pairs against 1 (the logits' share cancels): plain autodiff keeps every
  # layer's intermediates; remat keeps ~one [B, T, D] input per layer.
  def temp_bytes(fn, params):
    return fn.lower(params, src, tgt, mask, key0).compile().memory_analysis().temp_size_in_bytes

  params_1, plain_1 = _training_loss_grad(tiny_model(**{**size, 'num_encoder_layers': 1, 'num_decoder_layers': 1}))
  _, remat_1 = _training_loss_grad(tiny_model(remat=True, **{**size, 'num_encoder_layers': 1,
                                                             'num_decoder_layers': 1}))
  per_layer = (temp_bytes(plain, params) - temp_bytes(plain_1, params_1)) / 2
  per_layer_remat = (temp_bytes(remat, params) - temp_bytes(remat_1, params_1)) / 2
  assert per_layer > 1e6 and per_layer_remat < 0.3 * per_layer, (per_layer, per_layer_remat)
  # With dropout: every layer draws its own masks, reproducibly, and the same masks as without remat.
  params, dropped = _training_loss_grad(tiny_model(remat=True, **{**size, 'dropout': 0.3}))
  (a, grads_a), (b, _), (c, _) = (dropped(params, src, tgt, mask, jax.random.key(seed)) for seed in (1, 1, 2))
  assert a == b and a != c and a != loss
  _, dropped_plain = _training_loss_grad(tiny_model(**{**size, 'dropout': 0.3}))
  plain_a, plain_grads_a = dropped_plain(params, src, tgt, mask, jax.random.key(1))
  np.testing.assert_allclose(a, plain_a, rtol=1e-6)
  for g, g_r in zip(jax.tree.leaves(plain_grads_a), jax.tree.leaves(grads_a)):
    np.testing.assert_allclose(g_r, g, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('x_shape, w_shape, spec', [
    ((2, 5, 8), (8, 3, 2, 4), 'BTD,DJNH->BTJNH'),  # fused q/k/v kernel
    ((2, 5, 16), (16, 8), 'BTF,FD->BTD'),
    ((7, 8), (8, 2, 3), 'TD,DKV->TKV'),  # heads
])
def test_dense_and_its_written_out_gradient_equal_einsum_autodiff(x_shape, w_shape, spec):
  rng = np.random.default_rng(0)
  x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (x_shape, w_shape))
  g = jnp.asarray(rng.standard_normal(x_shape[:-1] + w_shape[1:]), jnp.float32)
  ours = jax.value_and_grad(lambda x, w: jnp.sum(model_lib.dense(x, w) * g), argnums=(0, 1))(x, w)
  autodiff = jax.value_and_grad(lambda x, w: jnp.sum(jnp.einsum(spec, x, w) * g), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(ours[0], autodiff[0], rtol=1e-5)
  for a, b in zip(ours[1], autodiff[1]):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # bfloat16 compute keeps the dtypes of its inputs in the gradient
  dx, dw = jax.grad(lambda x, w: jnp.sum(model_lib.dense(x, w).astype(jnp.float32)), argnums=(0, 1))(
      x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert dx.dtype == dw.dtype == jnp.bfloat16


def _plain_layer_norm(x, scale, bias):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + 1e-5) * scale + bias


def _plain_activated_dense(z, keep, w, kind, rate):
  h = jax.nn.relu(z) if kind == 'relu' else jax.nn.gelu(z, approximate=False)
  h = h if keep is None else jnp.where(keep, h / (1 - rate), 0).astype(h.dtype)
  return jnp.einsum('BTF,FD->BTD', h, w)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('transposed_lhs_copies', [True, False], ids=['cpu-form', 'gpu-form'])
def test_layer_norm_and_feed_forward_written_out_gradients_equal_autodiff(dtype, transposed_lhs_copies,
                                                                          monkeypatch):
  """`model.layer_norm` and `model.activated_dense` (GELU or ReLU, with and without a dropout mask)
  compute what autodiff of the plain formulas computes, values and gradients, in float32 and bfloat16,
  with either form of the weight gradient (h^T from z transposed, as on CPU, or h contracted over rows)."""
  monkeypatch.setattr(model_lib, '_dots_take_no_transposed_lhs', lambda: transposed_lhs_copies)
  rng = np.random.default_rng(3)
  x = jnp.asarray(3 * rng.standard_normal((2, 5, 16)) + 1, dtype)
  scale, bias = (jnp.asarray(rng.standard_normal(16), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.standard_normal((16, 8)) / 4, dtype)
  keep = jnp.asarray(rng.random((2, 5, 16)) > 0.3)
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == 'float32' else dict(rtol=2e-2, atol=2e-2)
  cases = [(model_lib.layer_norm, _plain_layer_norm, (x, scale, bias))]
  for kind in ('gelu', 'relu'):
    for mask in (keep, None):
      cases.append((lambda z, w, m=mask, k=kind: model_lib.activated_dense(z, m, w, k, 0.3),
                    lambda z, w, m=mask, k=kind: _plain_activated_dense(z, m, w, k, 0.3), (x, w)))
  for ours, plain, args in cases:
    g = jnp.asarray(rng.standard_normal(ours(*args).shape), jnp.float32)
    loss = lambda f: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * g),
                                                 argnums=tuple(range(len(args)))))
    (v_o, g_o), (v_p, g_p) = loss(ours)(*args), loss(plain)(*args)
    np.testing.assert_allclose(v_o, v_p, rtol=1e-6 if dtype == 'float32' else 1e-2)
    for a, b in zip(g_o, g_p, strict=True):
      assert a.dtype == b.dtype and a.shape == b.shape
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)


def test_every_param_has_logical_axis_names():
  model = tiny_model()
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert len(flat) == len(params)
  for spec, p in zip(flat, params):
    assert len(spec) == p.ndim


def test_bad_config_and_shapes_are_named():
  with pytest.raises(ValueError, match='does not divide'):
    model_lib.ModelConfig(d_model=30, num_heads=4)
  with pytest.raises(ValueError, match='unknown model config keys'):
    model_lib.ModelConfig.from_config({'d_model': 32, 'nheads': 2})
  model = tiny_model()
  with pytest.raises(ValueError, match='max_seq_len'):
    model(jnp.zeros((1, 4, 30), jnp.int32), jnp.zeros((1, 4, 4), jnp.int32))
  with pytest.raises(ValueError, match=r'int \[B, 4, length\]'):
    model(jnp.zeros((1, 3, 10), jnp.int32), jnp.zeros((1, 4, 4), jnp.int32))


def test_param_count_matches_presets():
  """The presets have the sizes of the original (issue table), counted without allocating weights."""
  import importlib

  expected = {'xsmall': 4e6, 'small': 15e6, 'medium': 31e6, 'large': 67e6, 'xlarge': 210e6}
  for name, approx in expected.items():
    config = importlib.import_module(f'configs.{name}').get_config()
    abstract = nnx.eval_shape(lambda: model_lib.SaxGPT(model_lib.ModelConfig.from_config(config.model),
                                                       rngs=nnx.Rngs(params=0)))
    n = model_lib.count_params(abstract)
    assert abs(n - approx) / approx < 0.1, (name, n)
