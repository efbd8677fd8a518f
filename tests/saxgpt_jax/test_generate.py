"""saxgpt_jax.generate and convert_torch end to end: fixture parity through the CLI, seams, audio out."""

import json
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from configs import tiny
from saxgpt_jax import checkpoint as ckpt_lib
from saxgpt_jax import convert_torch, decode, generate
from saxgpt_jax.delay import undo_delay
from tests.conftest import REPO_ROOT

GREEDY = decode.SamplingParams.make(greedy=True)


def test_convert_then_generate_reproduces_fixture_greedy(parity_dirs, tmp_path):
  """The first fixture through both command lines (subprocesses), the others through the same functions."""
  for i, d in enumerate(parity_dirs):
    ref = np.load(d / 'reference.npz')
    out_dir = tmp_path / d.name
    out_dir.mkdir()
    np.save(out_dir / 'backing.npy', undo_delay(ref['src']))
    frames = int(ref['gen_len']) - ref['src'].shape[1] - 1
    if i == 0:
      subprocess.run([sys.executable, '-m', 'saxgpt_jax.convert_torch', f'--checkpoint={d / "checkpoint.pt"}',
                      f'--output={out_dir / "ckpt"}'], check=True, cwd=REPO_ROOT, capture_output=True)
      subprocess.run([sys.executable, '-m', 'saxgpt_jax.generate', f'--checkpoint={out_dir / "ckpt"}',
                      f'--backing={out_dir / "backing.npy"}', f'--output={out_dir / "solo.npy"}', '--greedy',
                      f'--max_frames={frames}'], check=True, cwd=REPO_ROOT, capture_output=True)
    else:
      convert_torch.convert(str(d / 'checkpoint.pt'), str(out_dir / 'ckpt'))
      generate.run(checkpoint=str(out_dir / 'ckpt'), backing=str(out_dir / 'backing.npy'),
                   output=str(out_dir / 'solo.npy'), sampling=GREEDY, seed=0, num_samples=1, max_frames=frames,
                   max_seconds=None, window_stride=None, codec_spec=None, progress=False)
    np.testing.assert_array_equal(np.load(out_dir / 'solo.npy'), undo_delay(ref['greedy']))


def test_converter_names_bad_keys(parity_dirs, tmp_path):
  torch = pytest.importorskip('torch')
  ckpt = torch.load(parity_dirs[0] / 'checkpoint.pt', weights_only=True)
  sd = dict(ckpt['model_state_dict'])
  sd = {k.removeprefix('module.'): v for k, v in sd.items()}
  sd.pop('decoder.layers.0.linear1.bias')
  sd['encoder.layers.0.linear2.weight'] = sd['encoder.layers.0.linear2.weight'][:, :3]
  sd['extra.weight'] = torch.zeros(2)
  ckpt['model_state_dict'] = sd
  torch.save(ckpt, tmp_path / 'bad.pt')
  with pytest.raises(convert_torch.CheckpointFormatError) as e:
    convert_torch.load_torch_checkpoint(str(tmp_path / 'bad.pt'))
  msg = str(e.value)
  assert 'decoder.layers.0.linear1.bias' in msg and 'encoder.layers.0.linear2.weight' in msg
  assert 'extra.weight' in msg
  torch.save({'weights': 1}, tmp_path / 'other.pt')
  with pytest.raises(convert_torch.CheckpointFormatError, match='model_state_dict'):
    convert_torch.load_torch_checkpoint(str(tmp_path / 'other.pt'))


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  """A seeded random model with a 16-frame window (max_seq_len 21) saved like a converted checkpoint."""
  config = tiny.get_config()
  config.model.update(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64,
                      max_seq_len=21)
  config.data.seq_len = 16
  config.data.codec = 'random:0'
  config.sample.window_stride = 6
  path = tmp_path_factory.mktemp('ckpt') / 'tiny'
  ckpt_lib.save_params(path, ckpt_lib.build_model(config, seed=0), config)
  return path


def test_long_form_windows_continue_the_solo_at_every_seam(tiny_checkpoint):
  model, _ = ckpt_lib.load_model(tiny_checkpoint)
  backing = np.random.default_rng(0).integers(0, 2048, (1, 4, 40))
  solo = generate.generate_solo(model, backing, num_frames=40, window_stride=6, sampling=GREEDY,
                                rng=jax.random.key(0))[:, 0]
  plan = generate.plan_windows(model, 40, 6)
  assert plan.starts == [0, 6, 12, 18, 24] and plan.prompt_frames == 10
  for start in plan.starts[1:]:  # rerun each window from the final solo: its prompt comes back unchanged
    src, mask = generate.delayed_window(backing[0, :, start:start + 16], 16)
    out = decode.generate(model, src[None], num_steps=20, sampling=GREEDY, rng=jax.random.key(1),
                          src_mask=mask[None], prompt=solo[:, :, start:start + 10])
    window = np.asarray(undo_delay(out[:, 0]))[:, :, :min(16, 40 - start)]
    np.testing.assert_array_equal(window, solo[:, :, start:start + window.shape[2]])


def test_token_folder_output_samples_and_summary(tiny_checkpoint, tmp_path):
  backing = np.random.default_rng(1).integers(0, 2048, (4, 30))
  np.save(tmp_path / 'track.npy', backing)
  kwargs = dict(checkpoint=str(tiny_checkpoint), backing=str(tmp_path / 'track.npy'),
                sampling=decode.SamplingParams.make(temperature=1.0, top_k=50), num_samples=2, max_frames=None,
                max_seconds=0.5, window_stride=None, codec_spec=None, progress=False)
  summary = generate.run(output=str(tmp_path / 'out'), seed=3, **kwargs)
  s0, s1 = np.load(tmp_path / 'out' / 'track_s0_solo.npy'), np.load(tmp_path / 'out' / 'track_s1_solo.npy')
  assert s0.shape == (4, 25) and not np.array_equal(s0, s1)  # 0.5 s = 25 frames, two distinct samples
  written = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert written['outputs'][0]['frames'] == 25 and written['outputs'][0]['windows'] == 3
  assert written == json.loads(json.dumps(summary))
  generate.run(output=str(tmp_path / 'again'), seed=3, **kwargs)
  np.testing.assert_array_equal(np.load(tmp_path / 'again' / 'track_s0_solo.npy'), s0)


def test_audio_in_writes_solo_and_mix_wavs(tiny_checkpoint, tmp_path):
  sf = pytest.importorskip('soundfile')
  t = np.arange(32000 * 2) / 32000
  wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
  sf.write(tmp_path / 'backing.wav', wave.astype(np.float32), 32000)
  generate.run(checkpoint=str(tiny_checkpoint), backing=str(tmp_path / 'backing.wav'), output=str(tmp_path / 'o'),
               sampling=GREEDY, seed=0, num_samples=1, max_frames=None, max_seconds=None, window_stride=None,
               codec_spec=None, progress=False)
  solo, sr = sf.read(tmp_path / 'o' / 'backing_solo.wav')
  mix, _ = sf.read(tmp_path / 'o' / 'backing_mix.wav')
  assert sr == 32000 and len(solo) == 100 * 640 and len(mix) == len(solo)  # 2 s = 100 frames
  assert np.abs(mix).max() <= 1.0 and np.isfinite(solo).all()
  assert np.load(tmp_path / 'o' / 'backing_solo.npy').shape == (4, 100)


def test_bad_inputs_get_clear_errors(tiny_checkpoint, tmp_path):
  np.save(tmp_path / 'bad.npy', np.zeros((3, 10), np.int64))
  run = lambda backing, output='o': generate.run(
      checkpoint=str(tiny_checkpoint), backing=backing, output=str(tmp_path / output), sampling=GREEDY, seed=0,
      num_samples=1, max_frames=None, max_seconds=None, window_stride=None, codec_spec=None, progress=False)
  with pytest.raises(SystemExit, match=r'expected raw tokens \[4, N\] or \[B, 4, N\], got \(3, 10\)'):
    run(str(tmp_path / 'bad.npy'))
  with pytest.raises(SystemExit, match='does not exist'):
    run(str(tmp_path / 'missing.wav'))
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(SystemExit, match='unsupported type'):
    run(str(tmp_path / 'notes.txt'))
  sf.write(tmp_path / 'blip.wav', np.full(1600, 0.1, np.float32), 32000)
  with pytest.raises(SystemExit, match=re.escape(f'{tmp_path / "blip.wav"}: audio is 0.050 s long') +
                     '.*give at least 0.4 s of audio'):
    run(str(tmp_path / 'blip.wav'))
  clash = tmp_path / 'clash'
  clash.mkdir()
  np.save(clash / 'take1.npy', np.zeros((4, 10), np.int64))
  (clash / 'take1.wav').write_bytes(b'')
  with pytest.raises(SystemExit, match='take1.npy and take1.wav'):
    run(str(clash), 'out')
  with pytest.raises(SystemExit, match='is the --backing folder'):
    run(str(clash), 'clash/.')
  assert not (tmp_path / 'out').exists() and sorted(p.name for p in clash.iterdir()) == ['take1.npy', 'take1.wav']
  with pytest.raises(ckpt_lib.CheckpointError):
    generate.run(checkpoint=str(tmp_path / 'nockpt'), backing=str(tmp_path / 'bad.npy'), output='x.npy',
                 sampling=GREEDY, seed=0, num_samples=1, max_frames=None, max_seconds=None, window_stride=None,
                 codec_spec=None)


def test_command_skips_unreadable_backings_in_a_folder_and_names_them(tiny_checkpoint, tmp_path):
  """A folder with bad inputs among good ones: the good ones are generated, summary.json lists the skipped
  ones, and the command exits 1 naming each, without a traceback; a missing checkpoint is one error line."""
  folder = tmp_path / 'in'
  folder.mkdir()
  rng = np.random.default_rng(2)
  np.save(folder / 'a.npy', rng.integers(0, 2048, (4, 20)))
  np.save(folder / 'b.npy', np.zeros((3, 10), np.int64))  # 3 codebooks
  (folder / 'c.wav').write_bytes(b'')  # empty audio
  (folder / 'd.npy').write_bytes(b'not a numpy file')
  np.save(folder / 'e.npy', rng.integers(0, 2048, (4, 20)))
  cli = lambda checkpoint: subprocess.run(
      [sys.executable, '-m', 'saxgpt_jax.generate', f'--checkpoint={checkpoint}', f'--backing={folder}',
       f'--output={tmp_path / "out"}', '--greedy'], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  result = cli(tiny_checkpoint)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert 'error: 3 of 5 backings skipped' in result.stderr, result.stderr[-3000:]
  for name, why in (('b.npy', r'expected raw tokens [4, N]'), ('c.wav', 'file is empty (0 bytes)'),
                    ('d.npy', 'not a readable .npy file')):
    assert f'  - {folder / name}: {why}' in result.stderr, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert [entry['input'] for entry in summary['outputs']] == [str(folder / 'a.npy'), str(folder / 'e.npy')]
  assert [entry['input'] for entry in summary['skipped']] == [str(folder / n) for n in ('b.npy', 'c.wav', 'd.npy')]
  assert np.load(tmp_path / 'out' / 'a_solo.npy').shape == np.load(tmp_path / 'out' / 'e_solo.npy').shape == (4, 20)
  result = cli(tmp_path / 'nockpt')
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {tmp_path / "nockpt"}/config.json not found')
  one = subprocess.run([sys.executable, '-m', 'saxgpt_jax.generate', f'--checkpoint={tiny_checkpoint}',
                        f'--backing={folder / "b.npy"}', f'--output={tmp_path / "b_solo.npy"}'], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 1 and one.stderr.strip() == (  # a single unusable backing: one error line
      f'error: {folder / "b.npy"}: expected raw tokens [4, N] or [B, 4, N], got (3, 10).'), one.stderr[-3000:]


def test_a_rerun_into_the_same_folder_keeps_finished_solos_and_generates_the_rest(tiny_checkpoint, tmp_path,
                                                                                monkeypatch):
  """An interrupted folder run leaves summary.json listing what it finished; the rerun keeps those files
  and generates the skipped-then-fixed and the unfinished inputs, each as a run over it alone would."""
  folder = tmp_path / 'in'
  folder.mkdir()
  rng = np.random.default_rng(4)
  np.save(folder / 'a.npy', rng.integers(0, 2048, (4, 20)))
  np.save(folder / 'b.npy', np.zeros((3, 10), np.int64))  # wrong shape: skipped
  np.save(folder / 'c.npy', rng.integers(0, 2048, (4, 20)))
  run = lambda backing, output, seed=0: generate.run(
      checkpoint=str(tiny_checkpoint), backing=str(backing), output=str(output),
      sampling=decode.SamplingParams.make(temperature=1.0), seed=seed, num_samples=1, max_frames=None,
      max_seconds=None, window_stride=None, codec_spec=None, progress=False)
  solo_of = lambda out, name: np.load(out / f'{name}_solo.npy')
  out = tmp_path / 'out'
  with monkeypatch.context() as patch:
    calls = []
    real = generate.generate_solo
    def interrupted_on_the_second(*args, **kwargs):
      calls.append(1)
      if len(calls) == 2:
        raise KeyboardInterrupt
      return real(*args, **kwargs)
    patch.setattr(generate, 'generate_solo', interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
      run(folder, out)
  on_disk = json.loads((out / 'summary.json').read_text())
  assert [e['input'] for e in on_disk['outputs']] == [str(folder / 'a.npy')]
  assert [e['input'] for e in on_disk['skipped']] == [str(folder / 'b.npy')]
  a_written, a_first = (out / 'a_solo.npy').stat().st_mtime_ns, solo_of(out, 'a')
  np.save(folder / 'b.npy', rng.integers(0, 2048, (4, 20)))  # fixed
  summary = run(folder, out)
  assert [e['input'] for e in summary['outputs']] == [str(folder / n) for n in ('a.npy', 'b.npy', 'c.npy')]
  assert not summary['skipped'] and summary['outputs'][0] == on_disk['outputs'][0]
  assert summary['kept'] == [str(folder / 'a.npy')]
  assert (out / 'a_solo.npy').stat().st_mtime_ns == a_written  # kept, not generated again
  alone = tmp_path / 'alone'
  alone.mkdir()
  for name in ('b', 'c'):  # keyed by file name: the same solo as a run over that file alone
    shutil.copy(folder / f'{name}.npy', alone / f'{name}.npy')
    run(alone / f'{name}.npy', tmp_path / f'alone_{name}')
    np.testing.assert_array_equal(solo_of(out, name), solo_of(tmp_path / f'alone_{name}', name))
  assert not np.array_equal(solo_of(out, 'b'), solo_of(out, 'c'))
  run(folder, out, seed=1)  # other settings: every input again
  assert not np.array_equal(solo_of(out, 'a'), a_first)
