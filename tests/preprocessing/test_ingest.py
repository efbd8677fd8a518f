"""Ingest: URL validation, yt-dlp against a local HTTP server, and the files/stems/FiloSax layouts."""

import functools
import http.server
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from preprocessing import ingest, manifest

YOUTUBE = ('youtube.com', 'youtu.be')


@pytest.mark.parametrize('url', [
    'https://www.youtube.com/watch?v=dQw4w9WgXcQ', 'http://youtube.com/playlist?list=PL1',
    'https://music.youtube.com/watch?v=a', 'https://youtu.be/dQw4w9WgXcQ'])
def test_validate_url_accepts(url):
  assert ingest.validate_url(url, YOUTUBE) == url


@pytest.mark.parametrize('url, message', [
    ('file:///etc/passwd', 'only http'), ('ftp://youtube.com/x', 'only http'), ('youtube.com/watch', 'only http'),
    ('https://evil.com/watch?v=1', 'not supported'), ('https://youtube.com.evil.com/x', 'not supported'),
    ('https://notyoutube.com/x', 'not supported'), ('http:///x', 'not supported')])
def test_validate_url_rejects(url, message):
  with pytest.raises(ingest.IngestError, match=message):
    ingest.validate_url(url, YOUTUBE)


def test_read_url_inputs(tmp_path):
  urls = tmp_path / 'urls.txt'
  urls.write_text('# my solos\nhttps://youtu.be/a\n\n  https://www.youtube.com/watch?v=b  \n')
  assert ingest.read_url_inputs(f'{urls}, https://youtu.be/c', YOUTUBE) == [
      'https://youtu.be/a', 'https://www.youtube.com/watch?v=b', 'https://youtu.be/c']
  with pytest.raises(ingest.IngestError, match='does not exist'):
    ingest.read_url_inputs(str(tmp_path / 'missing.txt'), YOUTUBE)
  with pytest.raises(ingest.IngestError, match='No URLs'):
    ingest.read_url_inputs(' , ', YOUTUBE)
  (tmp_path / 'bad.txt').write_text('https://youtu.be/a\nhttps://example.org/b\n')
  with pytest.raises(ingest.IngestError, match="'example.org' is not supported"):
    ingest.read_url_inputs(str(tmp_path / 'bad.txt'), YOUTUBE)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.fixture(scope='module')
def http_root(tmp_path_factory):
  """A local HTTP server on 127.0.0.1 serving a generated WAV; stopped when the module ends."""
  root = tmp_path_factory.mktemp('www')
  tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
  sf.write(root / 'take 1.wav', np.stack([tone, tone], 1).astype(np.float32), 16000)
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=root))
  thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  server.server_close()
  thread.join(timeout=5)


def test_yt_dlp_download(http_root, tmp_path):
  url = f'{http_root}/take%201.wav'
  with pytest.raises(ingest.IngestError, match='not supported'):
    ingest.expand_url(url, YOUTUBE)
  videos = ingest.expand_url(url, ('127.0.0.1',), socket_timeout_s=5)
  assert videos == [ingest.Video('generic-take_1', url)]  # the id, made safe; never the page title
  path = ingest.download_audio(videos[0], tmp_path / 'dl', socket_timeout_s=5)
  assert path == tmp_path / 'dl' / 'generic-take_1.wav'
  wave, sr = sf.read(path, always_2d=True)
  assert sr == 16000 and wave.shape == (8000, 2)
  assert sorted(p.name for p in (tmp_path / 'dl').iterdir()) == ['generic-take_1.wav']  # no temporary left
  mtime = path.stat().st_mtime_ns
  assert ingest.download_audio(videos[0], tmp_path / 'dl') == path and path.stat().st_mtime_ns == mtime
  with pytest.raises(ingest.IngestError, match='could not read'):
    ingest.expand_url(f'{http_root}/missing.wav', ('127.0.0.1',), socket_timeout_s=5)


def test_yt_dlp_errors_come_once_in_the_exception_not_also_on_stderr(http_root, caplog, capfd):
  with caplog.at_level(logging.DEBUG, logger='yt_dlp'), pytest.raises(ingest.IngestError, match='404'):
    ingest.expand_url(f'{http_root}/missing.wav', ('127.0.0.1',), socket_timeout_s=5)
  assert not capfd.readouterr().err
  from_yt_dlp = [r for r in caplog.records if r.name == 'yt_dlp']
  assert any('404' in r.getMessage() for r in from_yt_dlp)  # kept, at DEBUG
  assert all(r.levelno == logging.DEBUG for r in from_yt_dlp)


def _wav(path, seconds=0.1, sr=8000):
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, np.zeros(int(seconds * sr), np.float32), sr)


def test_list_local(tmp_path):
  for name in ('a.wav', 'sub/a.wav', 'sub/b c.flac', 'sub/.hidden.wav', '.cache/x.wav', 'notes.txt'):
    _wav(tmp_path / 'music' / name) if not name.endswith('.txt') else (tmp_path / 'music' / name).write_text('x')
  _wav(tmp_path / 'single.mp3.wav')
  recordings = ingest.list_local(f'{tmp_path / "music"}, {tmp_path / "single.mp3.wav"}', ('wav', 'FLAC'))
  assert [r.recording_id for r in recordings] == ['music_a.wav', 'music_sub_a.wav', 'music_sub_b_c.flac',
                                                  'single.mp3.wav']
  assert all(not r.is_stems and Path(r.mix).is_file() for r in recordings)
  with pytest.raises(ingest.IngestError, match='neither a file nor a folder'):
    ingest.list_local(str(tmp_path / 'nope'), ('wav',))
  with pytest.raises(ingest.IngestError, match='No audio files'):
    ingest.list_local(str(tmp_path / 'music' / 'sub'), ('ogg',))


def test_list_local_unique_ids(tmp_path):
  _wav(tmp_path / 'x' / 'a b.wav')
  _wav(tmp_path / 'x' / 'a_b.wav')
  ids = [r.recording_id for r in ingest.list_local(str(tmp_path / 'x'), ('wav',))]
  assert len(set(ids)) == 2 and ids[0] == 'x_a_b.wav' and ids[1].startswith('x_a_b.wav-')


def test_inputs_of_earlier_runs_keep_their_ids_whatever_the_order(tmp_path):
  """A new input whose name clashes with a recording already in the output folder gets the hashed id, even
  when it is listed first; without the earlier runs, the first in order gets the plain id."""
  old, new = tmp_path / 'A' / 'jazz' / 'take.wav', tmp_path / 'B' / 'jazz' / 'take.wav'
  _wav(old)
  _wav(new)
  inputs = f'{tmp_path / "B" / "jazz"},{tmp_path / "A" / "jazz"}'
  ids = {r.source: r.recording_id for r in ingest.list_local(inputs, ('wav',))}
  assert ids[str(new)] == 'jazz_take.wav' and ids[str(old)].startswith('jazz_take.wav-')
  ids = {r.source: r.recording_id for r in ingest.list_local(inputs, ('wav',), known={'jazz_take.wav': str(old)})}
  assert ids[str(old)] == 'jazz_take.wav' and ids[str(new)].startswith('jazz_take.wav-')
  moved = {r.source: r.recording_id for r in ingest.list_local(str(tmp_path / 'B' / 'jazz'), ('wav',),
                                                               known={'jazz_take.wav': str(old)})}
  assert moved == {str(new): 'jazz_take.wav'}  # the earlier input is gone: treated as moved, keeps the id
  (tmp_path / 's' / 'a b').mkdir(parents=True)
  _wav(tmp_path / 's' / 'a b' / 'solo.wav')
  _wav(tmp_path / 's' / 'a_b' / 'solo.wav')
  stems = ingest.list_stems(str(tmp_path / 's'), known={'a_b': str(tmp_path / 's' / 'a_b')})
  assert {r.source: r.recording_id for r in stems}[str(tmp_path / 's' / 'a_b')] == 'a_b'


def test_list_stems(tmp_path):
  _wav(tmp_path / 'rec 1' / 'backing.wav')
  _wav(tmp_path / 'rec 1' / 'solo.wav')
  _wav(tmp_path / 'rec2' / 'solo.wav')  # no backing: fails later with a reason
  _wav(tmp_path / 'rec_1' / 'solo.wav')  # the same safe id as 'rec 1': made unique
  (tmp_path / 'unrelated').mkdir()
  recordings = ingest.list_stems(str(tmp_path))
  assert [(r.recording_id, r.is_stems) for r in recordings[:2]] == [('rec_1', True), ('rec2', True)]
  assert recordings[2].recording_id.startswith('rec_1-') and recordings[2].source == str(tmp_path / 'rec_1')
  assert recordings[0].backing == (str(tmp_path / 'rec 1' / 'backing.wav'),)
  assert recordings[0].solo == str(tmp_path / 'rec 1' / 'solo.wav')
  with pytest.raises(ingest.IngestError, match='No <recording_id>/backing.wav'):
    ingest.list_stems(str(tmp_path / 'unrelated'))
  with pytest.raises(ingest.IngestError, match='one existing folder'):
    ingest.list_stems(f'{tmp_path}, {tmp_path}')


def test_list_filosax_miniature(tmp_path):
  root = tmp_path / 'FiloSax'
  for name in ('Backing/01/Bass.wav', 'Backing/01/Piano.wav', 'Backing/02/Backing.wav',
               'Participant 1/01/Sax.wav', 'Participant 1/02/Sax.wav', 'Participant 2/01/Sax.wav',
               'Participant 2/03/Sax.wav'):
    _wav(root / name)
  recordings = {r.recording_id: r for r in ingest.list_filosax(str(root))}
  assert sorted(recordings) == ['filosax_p1_01', 'filosax_p1_02', 'filosax_p2_01', 'filosax_p2_03']
  assert recordings['filosax_p2_01'].backing == (str(root / 'Backing/01/Bass.wav'), str(root / 'Backing/01/Piano.wav'))
  assert recordings['filosax_p2_01'].solo == str(root / 'Participant 2/01/Sax.wav')
  assert recordings['filosax_p1_02'].backing == (str(root / 'Backing/02/Backing.wav'),)
  assert recordings['filosax_p2_03'].backing == ()  # no backing for piece 03: a failure, by name, later
  assert all(manifest.safe_id(rid) == rid for rid in recordings)
  with pytest.raises(ingest.IngestError, match='no Backing/ folder'):
    ingest.list_filosax(str(root / 'Participant 1'))


def test_list_recordings_unknown_kind():
  with pytest.raises(ingest.IngestError, match='Unknown source kind'):
    ingest.list_recordings('soundcloud', 'x', ('wav',))
