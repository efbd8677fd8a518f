"""Builds the `saxgpt_tokens` TFDS dataset (ArrayRecord) from a tokens folder.

  python -m preprocessing.build_tfds --tokens_dir=data/tokens --data_dir=data/tfds
  python -m preprocessing.build_tfds --tokens_dir=... --data_dir=... \\
      --beam_pipeline_options='--runner=DirectRunner --direct_running_mode=multi_processing --direct_num_workers=2'

Use this instead of the `tfds build` command, which needs TensorFlow. On a cluster pass the runner's
options instead (e.g. '--runner=DataflowRunner --project=P --region=R --temp_location=gs://...').
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from configs import cli
from preprocessing import local_workers, manifest, tfds_builder

_TOKENS_DIR = flags.DEFINE_string('tokens_dir', None, 'Tokens folder (manifest.jsonl + clips/) from preprocessing.',
                                  required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir to write saxgpt_tokens/<version>/ into.',
                                required=True)
_SPLIT_FRACTIONS = flags.DEFINE_list('split_fractions', ['0.8', '0.1', '0.1'],
                                     'Duration fractions train,validation,test (by recording; sum to 1).')
_SPLIT_SEED = flags.DEFINE_integer('split_seed', 0, 'Seed of the split by recording.')
_BEAM = flags.DEFINE_string('beam_pipeline_options', None,
                            'Run with Apache Beam using these pipeline flags (space separated). '
                            'Without it the dataset is generated in this process.')
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Rebuild even if this version is already prepared.')


def main(argv):
  cli.no_arguments(argv)
  local_workers.quiet_beam_logging()
  try:
    with cli.exit_on_ctrl_c(f'no new build was put in {_DATA_DIR.value} (a build is moved into place only once '
                            'complete); rerun the same command.'):
      counts = tfds_builder.build_dataset(
          _TOKENS_DIR.value, _DATA_DIR.value, split_fractions=[float(f) for f in _SPLIT_FRACTIONS.value],
          split_seed=_SPLIT_SEED.value, beam_pipeline_options=_BEAM.value, overwrite=_OVERWRITE.value)
  except (manifest.ManifestError, ValueError) as e:
    sys.exit(f'error: {e}')
  print(json.dumps(counts))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
