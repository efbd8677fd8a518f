r"""Preprocessing: audio (YouTube, local files, paired stems, FiloSax) -> EnCodec token clips -> TFDS.

One Apache Beam pipeline: ingest -> separate (Demucs; skipped for stems) -> LUFS normalise, mono, 32 kHz
-> RMS windows on the solo -> clip -> augment -> tokenize -> manifest -> TFDS `saxgpt_tokens`.

Examples:
  python -m preprocessing --config=configs/data/youtube.py \
      --config.source.inputs=https://www.youtube.com/playlist?list=...
  python -m preprocessing --config=configs/data/local.py --config.source.inputs=~/music/solos \
      --config.codec.weights=/models/encodec_32khz --config.demucs.repo=/models/demucs
  python -m preprocessing --config=configs/data/filosax.py --config.source.inputs=/data/FiloSax
  python -m preprocessing --config=configs/data/synth.py --config.beam.num_workers=1
  python -m preprocessing --config=configs/data/local.py \
      --beam_pipeline_options='--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp'

Every setting is in configs/data/base.py; override any with --config.SECTION.KEY=VALUE. Rerunning with
the same --config.output_dir resumes: finished recordings and clips are skipped. Bad inputs are listed in
<output_dir>/failures.jsonl; the exit status is 1 if anything failed (inputs or the TFDS build), 2 if
the run could not start.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from configs import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Preprocessing config file: configs/data/{youtube,local,filosax,synth}.py '
    '(every key and its default is in configs/data/base.py).',
    lock_config=True)
_BEAM = flags.DEFINE_string(
    'beam_pipeline_options', '',
    'Extra Apache Beam flags, passed through and overriding config.beam, e.g. '
    '"--runner=FlinkRunner --flink_master=host:8081" or "--direct_num_workers=4".')


def main(argv):
  cli.no_arguments(argv)
  if _CONFIG.value is None:
    cli.usage_error('give --config=configs/data/<source>.py (youtube, local, filosax or synth).')
  from preprocessing import local_workers

  local_workers.quiet_beam_logging()
  from preprocessing import ingest, pipeline

  try:
    summary = pipeline.run(_CONFIG.value, pipeline.split_beam_args(_BEAM.value))
  except (ingest.IngestError, pipeline.PipelineError) as e:
    print(f'preprocessing could not start: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f'preprocessing interrupted: the clips finished so far are kept in {_CONFIG.value.output_dir}; rerun '
          'the same command to go on from there.', file=sys.stderr)
    return 130
  print(summary.text())
  return 0 if summary.ok else 1


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
