"""`python -m saxgpt_jax.bench {train,decode,data} --json`: each subcommand runs and reports its figures.

The three commands run at once as subprocesses (the real CLI) on configs/tiny.py cut to one layer per
stack, with XLA's cheapest optimisation level, so compiles stay short.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from preprocessing import manifest, tfds_builder
from saxgpt_jax import host_memory

REPO_ROOT = Path(__file__).resolve().parents[2]
K = 4
SMALL = ['--config=configs/tiny.py', '--config.model.num_encoder_layers=1', '--config.model.num_decoder_layers=1',
         '--config.data.seq_len=16', '--json']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A prepared saxgpt_tokens dataset: 4 recordings x 1 clip of 40 frames."""
  tokens_dir = tmp_path_factory.mktemp('tokens')
  rng = np.random.default_rng(0)
  records = []
  for i in range(4):
    rec = manifest.ClipRecord(f'clip{i}', f'rec{i}', 0.0, 40 / 50, 'none', 40, manifest.CodecInfo(),
                              f'clips/clip{i}.npz')
    manifest.write_clip(tokens_dir, rec, *rng.integers(0, 2048, (2, K, 40), dtype=np.int16))
    records.append(rec)
  manifest.append_records(tokens_dir, records)
  out = tmp_path_factory.mktemp('tfds')
  tfds_builder.build_dataset(tokens_dir, out, split_fractions=(0.5, 0.25, 0.25))
  return out


@pytest.fixture(scope='module')
def results(data_dir, tmp_path_factory):
  profiles = tmp_path_factory.mktemp('profiles')
  commands = {
      # train: the reference in this process (the older method); decode: in its own (the default).
      # --torch_threads=1 on both: it applies where the reference runs, and the JSON reports it.
      'train': ['train', '--batch=2', '--frames=16', '--steps=2', '--warmup=0', '--reference=torch',
                '--reference_in_process', '--torch_threads=1', '--peak_flops=1e11', f'--profile_dir={profiles}/train'],
      # steps = rtf_frames + K, so the real-time-factor run reuses the batch-1 compile.
      # batch_1x2: 2 samples of one backing (shared cross K/V); torch decodes the backing twice.
      'decode': ['decode', '--batch=1,1x2', '--steps=20', '--rtf_frames=16', '--repeats=1', '--warmup=0',
                 '--reference=torch', '--torch_threads=1', f'--profile_dir={profiles}/decode'],
      # --json_file appends the line to a file (its folder made on the way) as well as printing it.
      'data': ['data', '--batch=2', '--steps=2', f'--config.data.data_dir={data_dir}',
               f'--json_file={profiles}/series/bench.jsonl',
               '--config.data.stride=8'],
      # Each must fail with one `error:` line: no traceback, no help text.
      'bad_batch': ['train', '--batch=1,2'],
      'bad_zero_batch': ['train', '--batch=0'],
      'bad_decode_batch': ['decode', '--batch=1,2y3'],
      'bad_frames_over_max_seq_len': ['train', '--frames=200'],  # a ConfigError from train.validate_config
      'bad_negative_frames': ['decode', '--frames=-5'],
      'bad_peak_flops': ['train', '--peak_flops=0'],
      'bad_no_dataset': ['data', f'--config.data.data_dir={tmp_path_factory.mktemp("empty")}'],
  }
  # One CPU device, as a user runs it; the cheapest XLA optimisation level, as only the plumbing and the
  # figures' consistency are under test here (on a busy 2-core machine a full compile takes minutes).
  # No allocator settings of the caller's: the CLI picks its own (saxgpt_jax/host_memory.py).
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT_VARIABLE)}
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  procs = {name: subprocess.Popen([sys.executable, '-m', 'saxgpt_jax.bench', args[0], *SMALL, *args[1:]], cwd=REPO_ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, args in commands.items()}
  out = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    if name.startswith('bad_'):
      out[name] = (proc.returncode, stderr)
      continue
    assert proc.returncode == 0, f'bench {name} failed:\n{stderr[-3000:]}'
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f'--json must print exactly one line, got {stdout!r}'
    out[name] = json.loads(lines[0])
  out['data_json_file'] = (profiles / 'series' / 'bench.jsonl').read_text()
  return out


def test_train_reports_throughput_mfu_compile_and_torch_ratio(results):
  r = results['train']
  assert r['command'] == 'train' and r['config'] == 'configs/tiny.py'
  assert (r['batch'], r['frames'], r['src_len'], r['tgt_len']) == (2, 16, 21, 20)
  assert r['peak_flops'] == 1e11 and r['flops_per_step'] > 0
  for impl in ('jax', 'torch'):
    f = r[impl]
    assert f['timed_steps'] == 2 and f['step_s'] > 0
    assert f['frames_per_s'] == pytest.approx(2 * 16 / f['step_s'])
    assert f['mfu'] == pytest.approx(r['flops_per_step'] / f['step_s'] / 1e11)
  assert r['jax']['compile_s'] > 0 and r['jax']['lower_s'] > 0 and np.isfinite(r['jax']['loss'])
  assert r['speedup_vs_torch'] == pytest.approx(r['jax']['frames_per_s'] / r['torch']['frames_per_s'])
  assert r['torch_process'] == 'same' and r['machine']['torch_threads'] == 1 and r['machine']['torch'] >= '2.'
  assert r['settle'] == 1  # the default: each timed step follows an untimed one of its own kind
  check_profile(r['jax']['profile'])
  hlo = open(r['jax']['profile']['hlo']).read()
  assert hlo.startswith('HloModule') and 'ENTRY' in hlo
  assert any(source.startswith('saxgpt_jax/model.py:') for source in r['jax']['profile']['top_sources'])
  assert r['machine']['platform'] == 'cpu' and r['machine']['num_devices'] == 1
  # `python -m saxgpt_jax.bench` restarted itself with a tuned malloc (saxgpt_jax/host_memory.py)
  expected = 'glibc-hugetlb' if host_memory.huge_pages_supported() else 'glibc'
  assert r['machine']['malloc'] == expected
  assert r['machine']['malloc_huge_pages'] == (expected == 'glibc-hugetlb')


def test_decode_reports_rates_scaling_rtf_and_no_recompiles(results):
  r = results['decode']
  assert (r['steps'], r['src_len']) == (20, 21)
  for impl in ('jax', 'torch'):
    for row, streams in (('batch_1', 1), ('batch_1x2', 2)):
      f = r[impl][row]
      assert f['frames_per_s'] == pytest.approx(streams * f['steps_per_s'])
      # The loop's time is a call's minus the encoder's, timed apart: on this busy 2-core machine, at 20 steps
      # of a 1-layer model, noise can make it negative, which the figures clamp (with a warning).
      assert f['call_s'] > 0 and f['encode_s'] > 0
      assert f['step_ms'] == pytest.approx(1e3 * max(f['call_s'] - f['encode_s'], 1e-9) / 20)
  assert r['jax']['batch_1']['compiles'] >= 1 and r['jax']['batch_1']['compile_s'] > 0
  assert r['recompiles_on_new_sampling'] == 0
  assert r['batch_scaling'] == pytest.approx(r['jax']['batch_1x2']['frames_per_s'] / r['jax']['batch_1']['frames_per_s'])
  assert r['torch_process'] == 'own' and r['machine']['torch_threads'] == 1 and r['machine']['torch'] >= '2.'
  assert r['speedup_vs_torch']['batch_1'] == pytest.approx(
      r['jax']['batch_1']['steps_per_s'] / r['torch']['batch_1']['steps_per_s'])
  assert r['rtf']['frames'] == 16 and r['rtf']['rtf'] == pytest.approx(r['rtf']['wall_s'] / (16 / 50))
  for row in ('batch_1', 'batch_1x2'):
    p = r['jax'][row]['profile']
    check_profile(p)
    assert f'/decode/{row}/' in p['trace'] and p['ops_per_step'] == pytest.approx(p['ops_per_call'] / 20)
    assert os.path.isfile(p['hlo']) and any(source.startswith('saxgpt_jax/') for source in p['top_sources'])


def check_profile(p):
  """--profile_dir: a Perfetto trace on disk and a consistent op summary of it."""
  assert os.path.isfile(p['trace']) and p['trace'].endswith('perfetto_trace.json.gz')
  assert p['ops_per_call'] > 0 and p['op_ms_per_call'] > 0 and 0 < len(p['top_ops']) <= 15
  top_ms = [op['ms_per_call'] for op in p['top_ops'].values()]
  assert sum(p['kind_ms_per_call'].values()) == pytest.approx(p['op_ms_per_call'])
  assert top_ms == sorted(top_ms, reverse=True) and sum(top_ms) <= p['op_ms_per_call'] * (1 + 1e-9)


def test_profile_summary_counts_leaf_ops_once(tmp_path):
  """XLA:CPU thunks nest (a while around its body): only the leaves count. GPU kernels on a stream may
  overlap their neighbours by a fraction of a microsecond: each still counts."""
  import gzip

  from saxgpt_jax.bench import profile

  meta = [{'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': '/device:GPU:0'}},
          {'ph': 'M', 'name': 'process_name', 'pid': 2, 'args': {'name': '/host:CPU'}}]
  cpu = lambda name, ts, dur, tid=7: {'ph': 'X', 'pid': 2, 'tid': tid, 'name': name, 'ts': ts, 'dur': dur,
                                       'args': {'hlo_op': name}}
  gpu = lambda name, ts, dur: {'ph': 'X', 'pid': 1, 'tid': 3, 'name': name, 'ts': ts, 'dur': dur}
  events = meta + [
      cpu('while.1', 0, 100), cpu('dot.2', 10, 30), cpu('add.3', 50, 20), cpu('dot.2', 200, 30, tid=8),
      {'ph': 'X', 'pid': 2, 'tid': 7, 'name': 'python work', 'ts': 0, 'dur': 500},  # not an op
      gpu('fusion_1', 0, 2.0), gpu('fusion_2', 1.8, 3.0), gpu('fusion_1', 4.7, 2.0)]
  trace = tmp_path / 'perfetto_trace.json.gz'
  with gzip.open(trace, 'wt') as f:
    json.dump({'traceEvents': events}, f)
  s = profile.summarize(trace, calls=2, top=2)
  assert s['ops_per_call'] == 3  # dot.2 x2, add.3, fusion_1 x2, fusion_2; not while.1 nor python
  assert s['op_ms_per_call'] == pytest.approx((30 + 20 + 30 + 2 + 3 + 2) / 2 / 1e3)
  assert list(s['top_ops']) == ['dot.2', 'add.3']
  assert s['top_ops']['dot.2'] == {'count_per_call': 1.0, 'ms_per_call': pytest.approx(0.03)}
  assert s['kind_ms_per_call'] == {'matmul': pytest.approx(0.03), 'other': pytest.approx(0.0135)}
  s = profile.summarize(trace, calls=2, top=4, ops={'fusion_2': {'kind': 'matmul', 'source': 'model.py:7'},
                                                   'fusion_1': {'kind': None, 'source': None}})
  assert s['kind_ms_per_call'] == {'matmul': pytest.approx(0.0315), 'other': pytest.approx(0.012)}
  assert s['top_sources'] == {'(library kernel: matmul)': pytest.approx(0.03),
                              '(library kernel: other)': pytest.approx(0.01),
                              '(no source)': pytest.approx(0.002), 'model.py:7': pytest.approx(0.0015)}
  assert [profile.op_kind(n) for n in ('cudnn_generated_fort_native_sdpa_sm90_flash_fprop', 'nvjet_tst_128x',
                                       'input_reduce_fusion_3', 'loop_add_fusion', 'copy.4')] == [
                                           'attention', 'matmul', 'reduction', 'other', 'copy']


def _sine(x):
  return jnp.sin(x) * 3.0


def test_hlo_ops_give_each_op_its_kind_and_source_line():
  """Kinds from the HLO text (GPU names say nothing of a Triton GEMM fusion), source lines from its stack
  frames, checked on a program compiled here: the fusion is attributed to its root's line, the ops fused
  into it to theirs, and the gradient's ops are marked backward."""
  from saxgpt_jax.bench import profile

  f = lambda x: jnp.cos(_sine(x) + 1.0).sum()
  here = lambda line: f'tests/saxgpt_jax/test_bench.py:{line}'
  forward = profile.hlo_ops(jax.jit(f).lower(jnp.ones(8)).compile().as_text(), package='tests')
  assert {op['source'] for name, op in forward.items() if 'fusion' in name} == {here(f.__code__.co_firstlineno)}
  assert {op['source'] for op in forward.values()} - {None} == {  # the fused sin and multiply: _sine's line
      here(f.__code__.co_firstlineno), here(_sine.__code__.co_firstlineno + 1)}
  backward = profile.hlo_ops(jax.jit(jax.grad(f)).lower(jnp.ones(8)).compile().as_text(), package='tests')
  assert any((op['source'] or '').endswith('(backward)') for op in backward.values())
  hlo = ('%fused_dot (p0: f32[8,8], p1: f32[8,8]) -> f32[8,8] {\n'
         '  ROOT %dot.1 = f32[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}\n'
         '}\n\n'
         '  %fusion.12 = bf16[8,8]{1,0} fusion(%a), kind=kCustom, calls=%c, metadata={op_name="jit(f)/add"},'
         ' backend_config={"kind":"__triton_nested_gemm_fusion"}\n'
         '  %custom-call.3 = (bf16[2,4]) custom-call(%q), custom_call_target="__cudnn$fmhaSoftmax"\n'
         '  %ynn_fusion.4 = f32[8,8]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot\n'
         '  %loop_add_fusion.2 = f32[8]{0} fusion(%x), kind=kLoop, calls=%d\n'
         '  %loop_mul_fusion.5 = f32[8]{0} fusion(%x), kind=kLoop, calls=%d,'
         ' metadata={op_name="jit(gemm_like)/mul" source_file="/src/cublas_notes.py"}\n')
  assert {name: op['kind'] for name, op in profile.hlo_ops(hlo).items() if '.' in name} == {
      'dot.1': 'matmul', 'fusion.12': 'matmul', 'custom-call.3': 'attention', 'ynn_fusion.4': 'matmul',
      'loop_add_fusion.2': None, 'loop_mul_fusion.5': None}
  assert profile.hlo_ops(hlo)['fusion_12']['kind'] == 'matmul'  # as a GPU trace names the kernel


def test_data_reports_pipeline_throughput(results):
  r = results['data']
  assert r['command'] == 'data' and r['global_batch_size'] == 2 and r['steps'] == 2
  assert r['frames_per_s'] == pytest.approx(r['batches_per_s'] * 2 * 16)
  assert [json.loads(line) for line in results['data_json_file'].splitlines()] == [r]


@pytest.mark.parametrize('name, message', [
    ('bad_batch', '--batch must be one positive integer'),
    ('bad_zero_batch', "--batch must be one positive integer, got ['0']"),
    ('bad_decode_batch', "a decode batch is B or BxG (B backings x G samples each, both >= 1), got '2y3'"),
    ('bad_frames_over_max_seq_len', 'exceed model.max_seq_len=133'),
    ('bad_negative_frames', '--frames must be >= 1, got -5'),
    ('bad_peak_flops', '--peak_flops must be > 0 FLOP/s per device, e.g. 989e12, got 0.0'),
    ('bad_no_dataset', "There is no TFDS dataset 'saxgpt_tokens'"),
])
def test_bad_flags_fail_with_one_error_line(results, name, message):
  returncode, stderr = results[name]
  assert returncode != 0 and message in stderr, stderr
  assert 'Traceback' not in stderr and '--json_file' not in stderr  # no traceback, no help text
  assert [line for line in stderr.splitlines() if line.startswith('error: ')] != [], stderr


def test_compile_watch_counts_recompiles_and_not_cache_hits():
  from saxgpt_jax.bench import compiles

  scale = jax.jit(lambda x, t: x * t)
  x3, x4 = jnp.ones(3), jnp.ones(4)
  with compiles.watch() as first:
    scale(x3, 2.0).block_until_ready()
  with compiles.watch() as new_value:
    scale(x3, 3.0).block_until_ready()
  with compiles.watch() as new_shape:
    scale(x4, 3.0).block_until_ready()
  assert first.compiles >= 1 and first.compile_s > 0 and 'jit(<lambda>)' in first.functions
  assert new_value.compiles == 0
  assert new_shape.functions.count('jit(<lambda>)') == 1


def test_reference_process_runs_calls_in_a_child_and_reports_its_failures():
  import functools
  import operator

  from saxgpt_jax.bench import reference_process

  # Factories and runs must pickle by reference: builtins and partials of them stand in for the torch model.
  runs = [('sleep', functools.partial(time.sleep, 0.2)), ('fail', functools.partial(operator.truediv, 1, 0))]
  with reference_process.ReferenceProcess(dict, runs, torch_threads=1) as ref:
    assert sorted(ref.runs) == ['fail', 'sleep'] and ref.info['torch_threads'] == 1
    start = time.perf_counter()
    ref.runs['sleep']()  # waits for the child
    assert time.perf_counter() - start >= 0.2
    with pytest.raises(reference_process.ReferenceFailed, match='ZeroDivisionError'):
      ref.runs['fail']()
  with pytest.raises(reference_process.ReferenceFailed, match='failed in its process:(.|\n)*ZeroDivisionError'):
    reference_process.ReferenceProcess(operator.truediv, 1, 0)  # the factory itself fails
  with reference_process.ReferenceProcess(dict, [('exit', functools.partial(os._exit, 3))]) as ref:
    with pytest.raises(reference_process.ReferenceFailed, match='died \\(exit code 3\\)'):
      ref.runs['exit']()


def test_decode_figures_warn_when_noise_outweighs_the_loop(caplog):
  from saxgpt_jax.bench import decode as decode_bench

  f = decode_bench._figures([1.0, 1.2, 1.4], [0.2, 0.2], batch=2, steps=100)
  assert f['step_ms'] == pytest.approx(10.0) and f['frames_per_s'] == pytest.approx(200.0)
  assert 'meaningless' not in caplog.text
  decode_bench._figures([0.10], [0.11], batch=1, steps=20)
  assert 'took no longer than its encoder pass alone' in caplog.text


def test_interleaved_lets_each_side_settle_before_its_timed_calls():
  from saxgpt_jax.bench import timing

  order, last = [], [None]

  def side(name):
    def run():
      time.sleep(0.3 if last[0] not in (None, name) else 0.0)  # a call right after the other side is slow
      last[0] = name
      order.append(name)
    return run

  runs = {'a': side('a'), 'b': side('b')}
  strict = timing.interleaved(runs, repeats=2, warmup=0)
  assert order == ['a', 'b', 'a', 'b'] and min(strict['a'][1:] + strict['b']) >= 0.3
  order.clear()
  settled = timing.interleaved(runs, repeats=2, warmup=1, settle=1)
  assert order == ['a', 'b'] + ['a', 'a', 'b', 'b'] * 2
  # the timed calls follow their own side: none sleeps (0.15 s leaves room for a busy machine's scheduling)
  assert len(settled['a']) == len(settled['b']) == 2 and max(settled['a'] + settled['b']) < 0.15
  order.clear()
  timing.interleaved({'a': runs['a']}, repeats=2, warmup=0, settle=3)  # one side: nothing to settle after
  assert order == ['a', 'a']
  with pytest.raises(ValueError, match='settle'):
    timing.interleaved(runs, repeats=1, settle=-1)
