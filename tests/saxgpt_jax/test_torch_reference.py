"""The PyTorch reference of the benchmarks computes exactly what the original SaxGPT computed."""

import json

import numpy as np
import pytest
import torch

from saxgpt_jax.bench import torch_reference


def _rel_err(actual, expected):
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture(scope='module', autouse=True)
def one_thread():
  # Tiny ops: thread hand-offs cost more than they save, badly so on a busy 2-core machine.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def loaded(parity_dirs):
  return [(d, torch_reference.SaxGPTTorch.from_checkpoint(d / 'checkpoint.pt'), np.load(d / 'reference.npz'))
          for d in parity_dirs]


def test_memory_and_logits_match_fixtures(loaded):
  for fixture_dir, model, ref in loaded:
    src = torch.from_numpy(ref['src']).long()
    tgt_in = torch.from_numpy(ref['tgt_in']).long()
    with torch.no_grad():
      memory = model.encode(src).numpy()
      logits = model(src, tgt_in).numpy()
    assert memory.shape == ref['memory'].shape, fixture_dir
    assert logits.shape == ref['logits'].shape, fixture_dir
    assert _rel_err(memory, ref['memory']) <= 1e-5, fixture_dir.name
    assert _rel_err(logits, ref['logits']) <= 1e-5, fixture_dir.name


def test_greedy_generation_matches_fixtures(loaded):
  for fixture_dir, model, ref in loaded:
    tokens = model.generate(torch.from_numpy(ref['src']).long(), int(ref['gen_len']))
    np.testing.assert_array_equal(tokens.numpy(), ref['greedy'], err_msg=fixture_dir.name)


def test_top1_sampling_equals_greedy_and_sampling_is_seeded(loaded):
  _, model, ref = loaded[0]
  src = torch.from_numpy(ref['src']).long()
  top1 = model.generate(src, 12, greedy=False, temperature=0.7, top_k=1,
                        generator=torch.Generator().manual_seed(0))
  np.testing.assert_array_equal(top1.numpy(), ref['greedy'][:, :, :12])
  draws = [model.generate(src, 12, greedy=False, top_k=50, generator=torch.Generator().manual_seed(s))
           for s in (1, 1, 2)]
  assert torch.equal(draws[0], draws[1])
  assert not torch.equal(draws[0], draws[2])
  # The delay pattern: codebook k is padding at positions p <= k.
  for k in range(draws[0].shape[1]):
    assert (draws[0][:, k, :k + 1] == 2048).all()


def test_config_from_jax_builds_the_fixture_layout(parity_dirs):
  fixture_dir = parity_dirs[0]
  original = json.loads((fixture_dir / 'model_config.json').read_text())
  jax_style = {'codebook_size': original['vocab_size'] - 1, 'num_heads': original['nhead'],
               **{k: v for k, v in original.items() if k not in ('vocab_size', 'nhead')}}
  rebuilt = torch_reference.SaxGPTTorch(torch_reference.model_config_from_jax(jax_style))
  state = torch_reference.strip_ddp_prefix(
      torch.load(fixture_dir / 'checkpoint.pt', weights_only=True)['model_state_dict'])
  rebuilt.load_state_dict(state, strict=True)
  with pytest.raises(ValueError, match='lacks'):
    torch_reference.SaxGPTTorch({'d_model': 8})
  with pytest.raises(ValueError, match='max_seq_len'):
    rebuilt.generate(torch.zeros(1, 4, 8, dtype=torch.long), original['max_seq_len'] + 2)


def test_attention_dropout_follows_dropout_unless_the_config_sets_it(parity_dirs):
  original = json.loads((parity_dirs[0] / 'model_config.json').read_text())
  original['dropout'] = 0.3
  rates = lambda model: {m.dropout for m in model.modules()
                         if isinstance(m, (torch_reference.SelfAttention, torch_reference.CrossAttention))}
  assert rates(torch_reference.SaxGPTTorch(original)) == {0.3}
  assert rates(torch_reference.SaxGPTTorch({**original, 'attention_dropout': 0.0})) == {0.0}
