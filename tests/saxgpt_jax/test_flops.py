"""The FLOPs count agrees with an independent counter: torch's FlopCounterMode on the reference model."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from configs import tiny
from saxgpt_jax import flops
from saxgpt_jax.bench import torch_reference

B, S, T = 2, 20, 16


@pytest.fixture(scope='module')
def setup():
  model_cfg = tiny.get_config().model
  model_cfg.num_encoder_layers = 3  # unequal stacks catch a swapped layer count
  model_cfg.dim_feedforward = 96
  torch.manual_seed(0)
  model = torch_reference.SaxGPTTorch(torch_reference.model_config_from_jax(model_cfg)).eval()
  src = torch.randint(0, 2048, (B, 4, S))
  tgt = torch.randint(0, 2048, (B, 4, T))
  return model_cfg, model, src, tgt


def _counted(fn):
  # The math attention backend runs attention as counted matmuls (the full score matrix, like XLA).
  with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
    fn()
  return counter.get_total_flops()


def test_train_step_flops_match_counted_forward_and_backward(setup):
  model_cfg, model, src, tgt = setup
  counted = _counted(lambda: model(src, tgt).sum().backward())
  assert flops.train_flops_per_step(model_cfg, B, S, T) == pytest.approx(counted, rel=1e-9)
  assert flops.forward_flops(model_cfg, B, S, T) == pytest.approx(counted / 3, rel=1e-9)


def test_decode_step_and_encode_flops_match_counted(setup):
  model_cfg, model, src, tgt = setup
  with torch.no_grad():
    memory_kv = []
    assert _counted(lambda: memory_kv.extend(model.memory_kv(model.encode(src)))) == pytest.approx(
        flops.encode_flops(model_cfg, B, S), rel=1e-9)
    _, caches = model.decode(tgt[:, :, :9], memory_kv)
    counted = _counted(lambda: model.decode(tgt[:, :, 9:10], memory_kv, caches=caches, start=9))
  assert flops.decode_flops_per_step(model_cfg, B, S, context_len=10) == pytest.approx(counted, rel=1e-9)


def test_peak_table_and_mfu():
  assert flops.peak_flops_per_device('NVIDIA H100 80GB HBM3') == 989e12
  assert flops.peak_flops_per_device('NVIDIA H100 PCIe') == 756e12
  assert flops.peak_flops_per_device('TPU v5 lite') == 197e12
  assert flops.peak_flops_per_device('cpu') is None
  assert flops.mfu(1e12, 0.5, 4e12) == pytest.approx(0.5)
  assert flops.mfu(1e12, 0.5, 1e12, num_devices=4) == pytest.approx(0.5)
  with pytest.raises(ValueError, match='positive'):
    flops.mfu(1e12, 0.0, 1e12)
