"""Generation: fixture greedy tokens, cached == full forward, samplers, prompts, no recompiles."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from saxgpt_jax import convert_torch, decode
from saxgpt_jax.delay import apply_delay, undo_delay
from saxgpt_jax import model as model_lib

PAD = 2048
GREEDY = decode.SamplingParams.make(greedy=True)


@pytest.fixture(scope='module')
def fixture_models(parity_dirs):
  return [(convert_torch.load_torch_checkpoint(str(d / 'checkpoint.pt')), np.load(d / 'reference.npz'))
          for d in parity_dirs]


def test_greedy_tokens_equal_fixtures(fixture_models):
  for model, ref in fixture_models:
    out = decode.generate(model, ref['src'], num_steps=int(ref['gen_len']) - 1, sampling=GREEDY,
                          rng=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out[:, 0]), ref['greedy'])


def test_cached_step_by_step_equals_full_forward(fixture_models):
  model, ref = fixture_models[0]
  src, tgt = jnp.asarray(ref['src']), jnp.asarray(ref['tgt_in'])
  full = model(src, tgt)
  cache = model.init_cache(model.encode(src), None, max_len=tgt.shape[2])
  step = nnx.jit(lambda m, t, p, c: m.decode_step(t, p, c))
  logits = []
  for p in range(tgt.shape[2]):
    lg, cache = step(model, tgt[:, :, p], jnp.int32(p), cache)
    logits.append(lg)
  got = jnp.stack(logits, axis=2)
  assert float(jnp.abs(got - full).max() / jnp.abs(full).max()) <= 1e-5


def fake_step(tokens_rk, position, cache):
  """Known answers: after padding the next code is (fed + 1) % 2048, else 10 * k + position."""
  k = jnp.arange(tokens_rk.shape[1])[None]
  target = jnp.where(tokens_rk == PAD, 10 * k + position, (tokens_rk + 1) % 2048)
  return jax.nn.one_hot(target, 2048) * 50.0, cache + 1


def expected_fake_stream(steps, k_count=4):
  out = np.full((k_count, steps + 1), PAD)
  for p in range(1, steps + 1):
    for k in range(k_count):
      if p <= k:
        continue
      fed = out[k, p - 1]
      out[k, p] = 10 * k + (p - 1) if fed == PAD else (fed + 1) % 2048
  return out


def test_loop_with_fake_logits_forces_delay_padding():
  loop = jax.jit(lambda keys, s: decode.sample_loop(fake_step, jnp.int32(0), keys, s, num_codebooks=4,
                                                    num_steps=9, padding_idx=PAD))
  out = loop(decode.row_keys(jax.random.key(0), 2, 1), GREEDY)
  np.testing.assert_array_equal(np.asarray(out[0]), expected_fake_stream(9))
  np.testing.assert_array_equal(out[0], out[1])


def test_loop_reproduces_prompt_frames_in_every_codebook_then_continues():
  frames = np.arange(4 * 5).reshape(1, 4, 5) + 100  # raw prompt frames [R, K, P_f]
  out = decode.sample_loop(fake_step, jnp.int32(0), decode.row_keys(jax.random.key(0), 1, 1), GREEDY,
                           num_codebooks=4, num_steps=14, padding_idx=PAD, prompt=apply_delay(jnp.asarray(frames)))
  raw = np.asarray(undo_delay(out))  # [1, K, 10]
  np.testing.assert_array_equal(raw[:, :, :5], frames)
  for k in range(4):  # the continuation follows the fake rule from each codebook's last prompt frame
    for f in range(5, raw.shape[2]):
      assert raw[0, k, f] == (raw[0, k, f - 1] + 1) % 2048


def draw(logits, sampling, n=2000, seed=0):
  keys = jax.random.split(jax.random.key(seed), n)
  return np.asarray(jax.jit(jax.vmap(sampling.next_tokens, in_axes=(None, 0)))(jnp.asarray(logits), keys))


def test_top1_sampling_equals_greedy():
  logits = jax.random.normal(jax.random.key(1), (6, 2048)) * 3
  top1 = draw(logits, decode.SamplingParams.make(temperature=1.5, top_k=1), n=50)
  assert (top1 == np.argmax(logits, -1)[None]).all()
  np.testing.assert_array_equal(draw(logits, GREEDY, n=3)[0], np.argmax(logits, -1))


def test_top_k_and_top_p_restrict_the_support():
  logits = np.full((1, 2048), -5.0, np.float32)
  logits[0, [3, 9, 40, 500, 1000]] = [4.0, 3.5, 3.0, 2.9, 2.8]
  top3 = draw(logits, decode.SamplingParams.make(top_k=3))
  assert set(np.unique(top3)) == {3, 9, 40}
  probs = np.zeros((1, 2048), np.float32)
  probs[0, [5, 6, 7, 8]] = [0.5, 0.3, 0.15, 0.05]
  nucleus = draw(np.log(probs + 1e-12), decode.SamplingParams.make(top_p=0.7))
  assert set(np.unique(nucleus)) == {5, 6}
  both = draw(np.log(probs + 1e-12), decode.SamplingParams.make(top_k=1, top_p=0.9))
  assert set(np.unique(both)) == {5}


def _numpy_support(logits, top_k, top_p, temperature=1.0):
  """The original's rule by sorting: top-k by rank, then the smallest top set whose mass reaches top_p."""
  order = np.argsort(-logits, kind='stable')
  kept = np.zeros(logits.shape, bool)
  kept[order[:top_k or len(logits)]] = True
  scaled = np.where(kept, logits, -np.inf) / temperature
  probs = np.exp(scaled - scaled.max())
  probs /= probs.sum()
  if 0 < top_p < 1:
    ranked = probs[order]
    above = np.cumsum(ranked) - ranked
    kept[order[above >= top_p]] = False
  return kept


_probabilities = jax.jit(lambda sampling, logits: sampling.probabilities(logits))  # one compile for all settings


@pytest.mark.parametrize('top_k,top_p,temperature', [(250, 0.0, 1.0), (1, 0.0, 1.0), (0, 0.9, 1.0), (250, 0.9, 0.7),
                                                     (40, 0.5, 1.3), (3000, 0.95, 1.0), (0, 0.0, 1.0)])
def test_probabilities_keep_exactly_the_sorted_top_k_and_nucleus(top_k, top_p, temperature):
  logits = np.asarray(jax.random.normal(jax.random.key(7), (5, 2048)) * 3)
  sampling = decode.SamplingParams.make(temperature=temperature, top_k=top_k, top_p=top_p)
  probs = np.asarray(_probabilities(sampling, jnp.asarray(logits)))
  for row in range(logits.shape[0]):
    expected = _numpy_support(logits[row], top_k, top_p, temperature)
    np.testing.assert_array_equal(probs[row] > 0, expected)
    want = np.where(expected, np.exp(logits[row] / temperature), 0)
    np.testing.assert_allclose(probs[row] / probs[row].sum(), want / want.sum(), rtol=1e-4, atol=1e-9)


def test_top_k_keeps_codes_tied_with_the_cut_off_like_the_original():
  logits = np.full((1, 2048), -5.0, np.float32)
  logits[0, [3, 9, 40, 41]] = [4.0, 3.5, 3.0, 3.0]
  assert set(np.unique(draw(logits, decode.SamplingParams.make(top_k=3)))) == {3, 9, 40, 41}


def test_temperature_matches_softmax_frequencies():
  logits = np.full((1, 2048), -1e9, np.float32)
  logits[0, :3] = [2.0, 1.0, 0.0]
  for temperature in (0.5, 2.0):
    freq = np.bincount(draw(logits, decode.SamplingParams.make(temperature=temperature), n=4000)[:, 0],
                       minlength=3)[:3] / 4000
    expected = np.asarray(jax.nn.softmax(jnp.asarray(logits[0, :3]) / temperature))
    np.testing.assert_allclose(freq, expected, atol=0.03)


@pytest.fixture(scope='module')
def small_model():
  cfg = model_lib.ModelConfig(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                              dim_feedforward=64, max_seq_len=24, dtype='float32')
  return model_lib.SaxGPT(cfg, rngs=nnx.Rngs(params=0))


def test_samples_are_reproducible_independent_and_never_recompile(small_model):
  src = jnp.asarray(np.random.default_rng(0).integers(0, 2048, (2, 4, 12)))
  run = lambda sampling, seed, n: np.asarray(decode.generate(
      small_model, src, num_steps=10, sampling=sampling, rng=jax.random.key(seed), num_samples=n))
  a = run(decode.SamplingParams.make(temperature=1.0), 0, 3)
  size = decode._generate._cache_size()
  assert a.shape == (2, 3, 4, 11)
  np.testing.assert_array_equal(a, run(decode.SamplingParams.make(temperature=1.0), 0, 3))
  assert not np.array_equal(a[:, 0], a[:, 1])  # each sample has its own stream
  assert not np.array_equal(a, run(decode.SamplingParams.make(temperature=1.0), 1, 3))
  run(decode.SamplingParams.make(temperature=0.7, top_k=5, top_p=0.9), 2, 3)
  run(GREEDY, 3, 3)
  assert decode._generate._cache_size() == size, 'sampling settings or seed triggered a recompile'
  one = run(decode.SamplingParams.make(temperature=1.0), 0, 1)
  np.testing.assert_array_equal(one[:, 0], a[:, 0])  # sample s's stream does not depend on num_samples
  assert ((a[:, :, :, :5] == PAD) == (np.arange(5)[None, :] <= np.arange(4)[:, None])[None, None]).all()


@pytest.mark.parametrize('few_rows', [False, True], ids=['as-stored', 'few-rows-layout'])
def test_cached_steps_sharing_cross_attention_between_samples_equal_full_forward(small_model, few_rows):
  """G samples per backing share its cross K/V; with a padded backing each row still equals the full
  forward pass on its own (repeated) backing. Also with the loop's few-rows layout
  (`decode.few_rows_layout`): output-first kernels and cross K/V as left operands."""
  rng = np.random.default_rng(5)
  b, g, t = 2, 3, 8
  src = jnp.asarray(rng.integers(0, 2048, (b, 4, 12)))
  mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7]]))
  tgt = jnp.asarray(rng.integers(0, 2048, (b * g, 4, t)))  # every sample has its own tokens
  full = small_model(jnp.repeat(src, g, axis=0), tgt, jnp.repeat(mask, g, axis=0))
  cache = small_model.init_cache(small_model.encode(src, mask), mask, max_len=t, num_samples=g, cross_left=few_rows)
  assert cache.cross_k[0].shape[0] == b * small_model.cfg.num_heads  # stored once per backing
  stepping = small_model
  if few_rows:
    graphdef, state = nnx.split(small_model)
    stepping = nnx.merge(graphdef, decode.kernels_in_compute_dtype(state, jnp.float32, out_first=True))
    assert stepping.decoder_layers[0].self_attn.out[...].shape == (32, 32) and model_lib.is_out_first(stepping.head_w)
    assert stepping.head_w[...].shape == (4, 2048, 32) and cache.cross_k[0].shape[1:] == (12, 16)
  step = nnx.jit(lambda m, tok, p, c: m.decode_step(tok, p, c))
  logits = []
  for p in range(t):
    lg, cache = step(stepping, tgt[:, :, p], jnp.int32(p), cache)
    logits.append(lg)
  got = jnp.stack(logits, axis=2)
  assert float(jnp.abs(got - full).max() / jnp.abs(full).max()) <= 1e-5


def test_model_prompt_is_reproduced_and_greedy_continuation_is_consistent(small_model):
  src = jnp.asarray(np.random.default_rng(1).integers(0, 2048, (1, 4, 12)))
  full = decode.generate(small_model, src, num_steps=12, sampling=GREEDY, rng=jax.random.key(0))
  prompt = undo_delay(full[:, 0])[:, :, :4]  # the first 4 raw frames
  cont = decode.generate(small_model, src, num_steps=12, sampling=GREEDY, rng=jax.random.key(5), prompt=prompt)
  np.testing.assert_array_equal(cont, full)
  sampled = decode.generate(small_model, src, num_steps=12, sampling=decode.SamplingParams.make(),
                            rng=jax.random.key(5), prompt=prompt)
  np.testing.assert_array_equal(undo_delay(sampled[:, 0])[:, :, :4], prompt)
  assert not np.array_equal(sampled, full)


def test_generate_rejects_bad_lengths(small_model):
  src = jnp.zeros((1, 4, 8), jnp.int32)
  with pytest.raises(ValueError, match='max_seq_len'):
    decode.generate(small_model, src, num_steps=30, sampling=GREEDY, rng=jax.random.key(0))
  with pytest.raises(ValueError, match='top_p'):
    decode.SamplingParams.make(top_p=1.5)


def test_generate_rejects_a_key_mask_cudnn_would_misread(small_model):
  """cuDNN takes the key mask as lengths: a row with padding before real frames is refused on that path
  (before anything compiles), accepted where attention applies the mask itself."""
  cudnn_cfg = dataclasses.replace(small_model.cfg, attention_impl='cudnn')
  cudnn = model_lib.SaxGPT(cudnn_cfg, rngs=nnx.Rngs(params=0))
  src = jnp.zeros((3, 4, 8), jnp.int32)
  holes = np.ones((3, 8), bool)
  holes[1, 2] = holes[2, 0] = False  # rows 1 and 2: padding before a real frame
  with pytest.raises(ValueError, match=r'src_mask rows \[1, 2\] are not a prefix'):
    decode.generate(cudnn, src, num_steps=6, sampling=GREEDY, rng=jax.random.key(0), src_mask=holes)
  with pytest.raises(ValueError, match='not a prefix'):
    cudnn.encode(src, jnp.asarray(holes))
  prefix = np.arange(8) < np.array([[8], [5], [1]])
  model_lib.check_cudnn_key_mask(cudnn_cfg, prefix)
  model_lib.check_cudnn_key_mask(small_model.cfg, holes)  # written-out attention applies any mask


def test_kernels_cast_before_the_loop_give_bit_identical_bfloat16_steps():
  """decode casts the matmul kernels to bfloat16 once; every other parameter keeps float32, so the
  encoder pass and the cached steps equal those of the model that casts at each use, bit for bit."""
  cfg = model_lib.ModelConfig(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=2,
                              dim_feedforward=64, max_seq_len=24, dtype='bfloat16')
  graphdef, state = nnx.split(model_lib.SaxGPT(cfg, rngs=nnx.Rngs(params=3)))
  keys = iter(jax.random.split(jax.random.key(5), len(jax.tree.leaves(state))))  # biases and norms not 0/1
  state = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape, x.dtype), state)
  cast = decode.kernels_in_compute_dtype(state, jnp.bfloat16)
  changed = {jax.tree_util.keystr(p) for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(state),
                                                           jax.tree.leaves(cast)) if a.dtype != b.dtype}
  assert changed and all(any(f"['{name}']" in p for name in model_lib.MATMUL_KERNELS) for p in changed)
  rng = np.random.default_rng(4)
  src, tokens = jnp.asarray(rng.integers(0, 2048, (2, 4, 12))), jnp.asarray(rng.integers(0, 2048, (2, 4)))

  @jax.jit
  def two_steps(state):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(model.encode(src), None, max_len=4)
    first, cache = model.decode_step(tokens, jnp.int32(0), cache)
    return first, model.decode_step(tokens[:, ::-1], jnp.int32(1), cache)[0]

  for got, want in zip(two_steps(cast), two_steps(state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
