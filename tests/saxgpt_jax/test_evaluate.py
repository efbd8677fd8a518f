"""saxgpt_jax.evaluate and plots: report fields and ranges, the pure metrics, PNGs, errors, the CLI."""

import importlib
import json
import math
import subprocess
import sys

import jax
import numpy as np
from flax import nnx
import pytest
from matplotlib import image as mpl_image
from scipy import stats

from configs import tiny
from saxgpt_jax import checkpoint as ckpt_lib
from saxgpt_jax import data, decode, evaluate, metrics_log, plots
from tests.conftest import build_token_dataset
from tests.conftest import REPO_ROOT

K, SEQ_LEN, V = 4, 16, 2048
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def random_model(config, seed=0):
  """SaxGPT of `config` with seeded numpy weights (N(0, 0.05), layer-norm scales around 1): the real
  architecture without the ~10 s CPU of compiling checkpoint.build_model's initialiser."""
  graphdef, params, rest = ckpt_lib.abstract_model(config)
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    base = 1.0 if 'scale' in jax.tree_util.keystr(path) else 0.0
    return (base + rng.normal(0, 0.05, leaf.shape)).astype(leaf.dtype)

  nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(params)))
  return nnx.merge(graphdef, params, rest)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A training-like workdir: tiny random checkpoint (16-frame windows), metrics.jsonl, and a TFDS dataset of
  12 synthetic clips of 10..40 frames (some shorter than a window)."""
  root = tmp_path_factory.mktemp('eval')
  build_token_dataset(root, min_frames=10, max_frames=40)
  config = tiny.get_config()
  config.model.update(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64,
                      max_seq_len=SEQ_LEN + K + 1)
  config.data.update(seq_len=SEQ_LEN, stride=8, data_dir=str(root / 'tfds'), codec='random:0')
  config.train.global_batch_size = 4
  work = root / 'work'
  ckpt_lib.save_params(work / ckpt_lib.CHECKPOINT_SUBDIR, random_model(config), config)
  lines = [{'step': s, 'split': 'train', 'time': 0.0, 'loss': 8.0 - s / 50, 'learning_rate': 1e-3,
            'accuracy_k0': s / 1000} for s in range(10, 110, 10)]
  lines.append({'step': 100, 'split': 'validation', 'time': 0.0, 'loss': 6.5, 'accuracy_k0': 0.05,
                'perplexity_k0': 600.0})
  (work / metrics_log.METRICS_FILE).write_text(''.join(json.dumps(line) + '\n' for line in lines))
  return work


@pytest.fixture(scope='module')
def report(workdir):
  return evaluate.evaluate(str(workdir), 'test', num_examples=3, codec_spec='none', progress=False)


def test_report_fields_and_value_ranges(workdir, report):
  out = workdir / 'eval_test'  # CHECKPOINT/eval_<split> as --checkpoint names it, not inside checkpoints/
  written = json.loads((out / 'report.json').read_text(),
                       parse_constant=lambda c: pytest.fail(f'non-JSON constant {c} in report.json'))
  assert written == report
  assert report['step'] == 0 and report['split'] == 'test' and report['checkpoint'] == str(workdir)
  assert report['output'] == str(out.resolve())
  assert report['settings']['codec'] == 'none' and report['settings']['num_examples'] == 3
  tf = report['teacher_forced']
  config = ckpt_lib.read_config(workdir)
  assert tf['num_windows'] == data.num_windows(config, 'test')  # every window once, padding adds nothing
  assert 2 <= tf['num_batches']  # 4 test clips -> more windows than one batch of 4
  for suffix in [''] + [f'_k{k}' for k in range(K)]:
    assert 0 <= tf[f'accuracy{suffix}'] <= 1
    assert math.log(V) - 1.0 < tf[f'loss{suffix}'] < math.log(V) + 1.0  # a random model is near uniform
    assert tf[f'perplexity{suffix}'] == pytest.approx(math.exp(tf[f'loss{suffix}']))
  agree = report['agreement']
  assert agree['num_windows'] == 3 and agree['num_steps'] == SEQ_LEN + K
  assert all(0 < n <= SEQ_LEN for n in agree['real_frames'])
  for name in ('ar_vs_tf', 'ar_vs_reference', 'tf_vs_reference', 'sampled_vs_reference'):
    assert 0 <= agree[name]['agreement'] <= 1 and len(agree[name]['agreement_k']) == K
  first = agree['ar_vs_tf']['first_divergence_frame']
  assert len(first) == 3 and all(f is None or 0 <= f < n for f, n in zip(first, agree['real_frames']))
  dist = report['distribution']
  max_bits = math.log2(sum(agree['real_frames']))  # no more distinct codes than tokens
  for name in ('reference', 'greedy', 'sampled', 'split_reference'):
    assert len(dist[name]['entropy_bits_k']) == K
    assert all(0 <= h <= math.log2(V) for h in dist[name]['entropy_bits_k'])
  assert all(h <= max_bits + 1e-9 for h in dist['reference']['entropy_bits_k'])
  for name in ('greedy', 'sampled'):
    assert all(kl > 0 for kl in dist[name]['kl_to_reference_bits_k'])
  assert set(report['plots']['files']) == {'training_curves', 'token_heatmaps', 'agreement_by_frame'}
  assert report['plots']['skipped'] == {'spectrograms': '--codec=none'}
  for path in report['plots']['files'].values():
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_MAGIC
    height, width, _ = mpl_image.imread(path).shape
    assert height > 300 and width > 600


def test_max_batches_and_no_examples(workdir, tmp_path):
  report = evaluate.evaluate(str(workdir / 'checkpoints'), 'validation', output=str(tmp_path / 'out'),
                             max_batches=1, num_examples=0, codec_spec='none', progress=False)
  assert report['teacher_forced']['num_batches'] == 1 and 'agreement' not in report
  assert set(report['plots']['files']) == {'training_curves'}
  assert set(report['plots']['skipped']) == {'token_heatmaps', 'agreement_by_frame', 'spectrograms'}
  assert json.loads((tmp_path / 'out' / 'report.json').read_text())['split'] == 'validation'


def test_greedy_and_teacher_forced_agree_where_they_see_the_same_context(workdir):
  """Frame 0 of codebook 0 is predicted from the start token alone in both modes, so AR and TF must match
  there; later they differ for a random model (AR feeds back its own tokens). Catches off-by-one alignment."""
  model, config = ckpt_lib.load_model(workdir)
  batches = evaluate._iterator_factory(config, 'test')
  _, examples, _ = evaluate.teacher_forced_pass(model, batches, max_batches=1, num_examples=3, codebook_size=V,
                                                progress=False)
  section, arrays = evaluate.generation_checks(model, examples, decode.SamplingParams.make(greedy=True), 0, 0.5)
  np.testing.assert_array_equal(arrays['greedy'][:, 0, 0], arrays['teacher_forced'][:, 0, 0])
  np.testing.assert_array_equal(arrays['greedy'], arrays['sampled'])  # greedy sampling settings = greedy
  assert section['agreement']['ar_vs_tf']['agreement'] < 1.0


def test_agreement_on_a_hand_made_case():
  a = np.zeros((2, 2, 5), np.int32)
  b = a.copy()
  b[0, 1, 3] = 7  # window 0 differs at frame 3 in codebook 1
  b[1, 0, 4] = 7  # window 1 differs only at frame 4, which is padding there
  real = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], bool)
  result = evaluate.agreement(a, b, real)
  np.testing.assert_allclose(result['rate_k'], [1.0, 8 / 9])
  assert result['rate'] == pytest.approx(17 / 18)
  np.testing.assert_array_equal(result['first_divergence'], [3, -1])
  np.testing.assert_allclose(result['rate_by_frame'][:, 4], [1.0, 1.0])  # only window 0 is real at frame 4
  np.testing.assert_allclose(result['rate_by_frame'][1, 3], 0.5)
  assert evaluate.agreement(a, a, real)['rate'] == 1.0
  with pytest.raises(ValueError, match=r'\[B, N\] mask'):
    evaluate.agreement(a, b, real[:, :3])


def test_entropy_and_kl():
  counts = np.array([[5, 5, 5, 5, 0, 0, 0, 0], [20, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_allclose(evaluate.entropy_bits(counts), [2.0, 0.0], atol=1e-12)
  assert np.isnan(evaluate.entropy_bits(np.zeros((1, 4))))[0]
  np.testing.assert_array_equal(evaluate.kl_divergence_bits(counts, counts), [0.0, 0.0])
  other = counts[::-1]
  kl = evaluate.kl_divergence_bits(counts, other, smoothing=0.5)
  assert (kl > 0).all()
  smooth = lambda c: (c + 0.5) / (c + 0.5).sum()
  np.testing.assert_allclose(kl, [stats.entropy(smooth(p), smooth(q), base=2) for p, q in zip(counts, other)])
  with pytest.raises(ValueError, match='smoothing'):
    evaluate.kl_divergence_bits(counts, other, smoothing=0)
  tokens = np.array([[[3, 3, 1, 2048]]])  # [B=1, K=1, N=4], last frame is padding
  np.testing.assert_array_equal(evaluate.code_histograms(tokens, evaluate.real_frames(tokens), 4), [[0, 1, 0, 2]])


def test_spectrogram_of_a_sine_peaks_at_its_frequency(tmp_path):
  sr = 32000
  t = np.arange(sr // 2) / sr
  tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
  db, freqs, times = plots.stft_db(tone, sr)
  assert db.shape == (len(freqs), len(times)) and times[-1] <= 0.5
  assert abs(freqs[db.mean(axis=1).argmax()] - 1000) <= sr / 1024
  path = plots.spectrograms({'backing': tone, 'solo': np.zeros_like(tone)}, sr, tmp_path / 'spec.png')
  height, width, _ = mpl_image.imread(path).shape
  assert height > 300 and width > 600 and not list(tmp_path.glob('.*tmp*'))


@pytest.mark.parametrize('perplexities', [(160, 230, 480), (3.2, 40.0, 1800.0)])
def test_the_perplexity_axis_labels_a_value_at_or_below_the_lowest_point(perplexities):
  validation = {100 * (i + 1): {'perplexity_k0': p, 'perplexity_k1': 1.1 * p} for i, p in enumerate(perplexities)}
  fig = plots.training_curves_figure({}, validation, num_codebooks=2)
  fig.canvas.draw()
  ax = fig.axes[3]
  low, high = ax.get_ylim()
  labelled = [t.get_loc() for t in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
              if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high]
  assert ax.get_yscale() == 'log' and len(labelled) >= 3, labelled
  assert min(labelled) <= min(perplexities) and max(labelled) >= 1.1 * max(perplexities) / 2, (labelled, low, high)


def test_metrics_workdir_finds_metrics_for_workdir_and_checkpoints_dir(workdir, tmp_path):
  assert evaluate.metrics_workdir(workdir) == workdir.resolve()
  assert evaluate.metrics_workdir(workdir / 'checkpoints') == workdir.resolve()
  assert evaluate.metrics_workdir(tmp_path) is None


def test_clear_errors(workdir, tmp_path):
  with pytest.raises(ckpt_lib.CheckpointError, match='does not exist'):
    evaluate.evaluate(str(tmp_path / 'nope'), 'test', progress=False)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ckpt_lib.CheckpointError, match='config.json'):
    evaluate.evaluate(str(tmp_path / 'empty'), 'test', progress=False)
  with pytest.raises(FileNotFoundError, match='build_tfds'):
    evaluate.evaluate(str(workdir), 'test', data_dir=str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="no split 'dev'"):
    evaluate.evaluate(str(workdir), 'dev', progress=False)
  with pytest.raises(evaluate.EvaluationError, match='num_examples'):
    evaluate.evaluate(str(workdir), 'test', num_examples=-1, progress=False)
  never = lambda *_: pytest.fail('the teacher-forced pass ran before the settings were checked')
  for smoothing in (0, -1):
    with pytest.raises(evaluate.EvaluationError, match='--kl_smoothing must be > 0'):
      evaluate.evaluate(str(workdir), 'test', kl_smoothing=smoothing, iterator_factory=never, progress=False)
  # A codec named on the command line must work (one from the checkpoint config only skips the spectrograms).
  missing = tmp_path / 'no_codec'
  with pytest.raises(evaluate.EvaluationError, match=f"--codec={missing}: .*Cannot load EnCodec weights '{missing}'"):
    evaluate.evaluate(str(workdir), 'test', codec_spec=str(missing), iterator_factory=never, progress=False)
  (tmp_path / 'report.txt').write_text('x')
  with pytest.raises(evaluate.EvaluationError, match='report.txt is a file; pass a folder'):
    evaluate.evaluate(str(workdir), 'test', output=str(tmp_path / 'report.txt'), iterator_factory=never,
                      progress=False)


def test_cli_help_missing_checkpoint_and_no_torch(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'saxgpt_jax.evaluate', '--helpshort'], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
  for flag in ('--checkpoint', '--split', '--num_examples', '--codec', '--max_batches', '--best', '--data_dir'):
    assert flag in result.stdout
  assert 'report.json' in result.stdout and 'KL' in result.stdout
  code = ('import sys\nfrom absl import app\nfrom saxgpt_jax import evaluate\nevaluate.define_flags()\n'
          f'sys.argv = ["evaluate", "--checkpoint={tmp_path / "nope"}"]\n'
          'try:\n  app.run(evaluate.main)\nfinally:\n  assert "torch" not in sys.modules, "torch imported"\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 1 and 'torch imported' not in result.stderr
  assert 'error:' in result.stderr and 'does not exist' in result.stderr


def test_importable_next_to_generate():
  """evaluate defines its absl flags only when run as a program, so both modules import in one process."""
  importlib.import_module('saxgpt_jax.generate')
  importlib.reload(evaluate)


def test_read_metrics_ignores_a_last_line_cut_short_and_nothing_else(tmp_path):
  good = [{'step': 1, 'split': 'train', 'time': 0.0, 'loss': 2.0}, {'step': 2, 'split': 'train', 'time': 0.0, 'loss': 1.5}]
  text = ''.join(json.dumps(r) + '\n' for r in good)
  (tmp_path / metrics_log.METRICS_FILE).write_text(text + '{"step": 3, "split": "tr')  # a killed run's last write
  assert sorted(metrics_log.read_metrics(tmp_path, 'train')) == [1, 2]
  (tmp_path / metrics_log.METRICS_FILE).write_text('{"step": 3, "spl\n' + text)  # damage earlier in the file
  with pytest.raises(json.JSONDecodeError):
    metrics_log.read_metrics(tmp_path)
