"""Bad input and faults: one clear line naming the parameter or file, the right exit code, nothing produced lost.

Exit code 2 means a parameter (or path argument) to fix, 1 a data error, a failed round or a full disk. Each case
that touches an existing run checks that every file the run had produced is byte-identical afterwards.
"""
import errno, hashlib, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from zls.core import load_mask, save_mask
from zls.methods import METHODS
from zls.shapes import make_shapes
from conftest import TINY, cli

ZLS = str(Path(sys.executable).parent / 'zls')


def sets(**params) -> list[str]:
    return [a for k, v in params.items() for a in ('--set', f'{k}={v}')]


def zls(*argv, env=None) -> subprocess.CompletedProcess:
    "Run `zls` as a user does, in a new process."
    return subprocess.run([ZLS, *map(str, argv)], capture_output=True, text=True, env=env)


def snapshot(folder: Path) -> dict:
    "Every file under `folder` (the lock aside) by its relative path and digest."
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file() and p.name != '.lock'}


def one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f'expected one line on stderr, got {len(lines)}:\n{err}'
    assert lines[0].startswith('zls: error: ')
    return lines[0]


@pytest.fixture(scope='module')
def data(strict_run) -> Path:
    "The shared run's data root (its tiny shapes set)."
    return Path(params_of(strict_run)['data_root'])


def params_of(run: Path) -> dict:
    return json.loads((run / 'run.json').read_text())['params']


def same_run(run: Path, **extra) -> list[str]:
    "`--set` arguments that make a run with the parameters of `run` (TINY and its data root)."
    return sets(**TINY, data_root=params_of(run)['data_root'], **extra)


def rerun(run: Path, rounds: int = 1, **extra) -> tuple[int, str, str]:
    "`zls run` again on `run` (in this process) with its own parameters, changed by `extra`."
    return cli('run', '--name', run.name, '--out', run.parent, '--rounds', rounds, '--no-report',
               *same_run(run, **extra))


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / 'runs' / run.name
    shutil.copytree(run, dst)
    return dst


@pytest.mark.parametrize('setting, names', [
    ('top_p=150', 'top_p=150.0 is invalid'),
    ('views=2x', 'views'),
    ('batch_size=0', 'batch_size=0 is invalid'),
    ('lr=0', 'lr=0.0 is invalid'),
    ('threads=-1', 'threads=-1 is invalid'),
    ('kernels=fast', "kernels='fast' is invalid"),
    ('dataset=voc', 'split'),  # a dataset without its split
    ('unseen=purple cross', 'purple cross'),
    ('ps_T=0.5', 'belongs to method pseudoseg'),
    ('eval_views=2x', "eval_views='2x' is invalid"),
    ('init_from=nowhere/train.pt', 'no such checkpoint; run the pretraining first'),
    ('init_from=weights.pth', "weights.pth' is invalid"),
])
def test_bad_parameters_are_refused_before_anything_is_written(setting, names, tmp_path, data):
    code, _, err = cli('run', '--out', tmp_path, '--set', setting, *sets(data_root=data))
    assert code == 2
    assert names in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_rounds_beyond_the_method_and_negative_rounds(tmp_path):
    for args, names in ((('--rounds', '-1'), 'rounds must be >= 0'),
                        (('--rounds', '1', '--set', 'method=pseudoseg'), 'method=pseudoseg has rounds 0..0 only')):
        code, _, err = cli('run', '--out', tmp_path, *args)
        assert code == 2 and names in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_help_gives_each_methods_default_rounds():
    code, out, _ = cli('run', '--help')
    assert code == 0
    text = ' '.join(out.split())
    for name, mod in METHODS.items(): assert f'{name} {mod.ROUNDS}' in text


def bad_data(tmp_path: Path, data: Path) -> Path:
    "A copy of the tiny shapes data to damage."
    root = make_shapes(data, n_train=TINY['n_train'], n_val=TINY['n_val'])
    dst = tmp_path / 'data' / root.relative_to(data)
    shutil.copytree(root, dst)
    return dst


@pytest.mark.slow
def test_mask_ids_outside_the_classes_are_a_data_error(tmp_path, data):
    root = bad_data(tmp_path, data)
    mask = root / 'SegmentationClass' / 'train_00003.png'
    m = load_mask(mask)
    m[:2, :2] = 200
    save_mask(mask, m)
    res = zls('run', '--name', 'r', '--out', tmp_path / 'runs', '--rounds', 0, '--no-report',
              *sets(**TINY, data_root=tmp_path / 'data'))
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f'{mask}: label ids [200] (4 pixels)' in line


@pytest.mark.slow
def test_a_truncated_image_is_a_data_error_naming_the_file(tmp_path, data):
    root = bad_data(tmp_path, data)
    img = root / 'JPEGImages' / 'val_00002.png'
    raw = img.read_bytes()
    img.write_bytes(raw[:len(raw) // 2])
    res = zls('run', '--name', 'r', '--out', tmp_path / 'runs', '--rounds', 0, '--no-report',
              *sets(**TINY, data_root=tmp_path / 'data'))
    assert res.returncode == 1
    assert f'{img}: cannot read this image' in one_line(res.stderr)


@pytest.mark.slow
def test_a_corrupt_checkpoint_of_a_finished_round_says_what_to_delete(strict_run, tmp_path):
    run = copy_run(strict_run, tmp_path)
    ckpt = run / 'round_0' / 'train.pt'
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = snapshot(run)
    code, _, err = cli('eval', ckpt)
    assert code == 1
    assert f"delete it and {run / 'round_0' / 'metrics.json'} to retrain that round" in one_line(err)
    code, _, err = cli('eval', run / 'round_0' / 'metrics.json')
    assert code == 2 and 'is not a checkpoint: expected a .pt file' in one_line(err)
    assert snapshot(run) == before


@pytest.mark.slow
def test_following_the_advice_retrains_the_round(strict_run, tmp_path):
    run = copy_run(strict_run, tmp_path)
    good = snapshot(run)
    (run / 'round_1' / 'train.pt').unlink()  # what the message on a corrupt checkpoint says to delete
    (run / 'round_1' / 'metrics.json').unlink()
    res = zls('run', '--name', run.name, '--out', run.parent, '--rounds', 1, '--no-report',
              *same_run(run))
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'round 1: mIoU seen' in res.stdout
    after = snapshot(run)
    for f in ('round_1/metrics.json', 'round_0/train.pt', 'round_0/metrics.json'): assert f in after
    assert after['round_0/train.pt'] == good['round_0/train.pt']


@pytest.mark.slow
def test_a_second_run_on_the_same_name_is_one_line(strict_run, tmp_path):
    import fcntl
    run = copy_run(strict_run, tmp_path)
    before = snapshot(run)
    with open(run / '.lock', 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = rerun(run)
    assert code == 2 and 'is in use by another zls run' in one_line(err)
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_full_disk_is_one_line(strict_run, tmp_path, monkeypatch):
    import zls.pipeline
    run = copy_run(strict_run, tmp_path)
    before = snapshot(run)
    def full(*a, **k): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / 'run.json'))
    monkeypatch.setattr(zls.pipeline, 'atomic_write', full)
    code, _, err = rerun(run)
    assert code == 1
    assert f"No space left on device: {run / 'run.json'}" in one_line(err)
    assert snapshot(run) == before


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    before = snapshot(tmp_path)
    code, _, err = cli('report', tmp_path)
    assert code == 2 and 'is not a run folder' in one_line(err)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_fewer_rounds_keep_the_finished_ones(strict_run, tmp_path):
    run = copy_run(strict_run, tmp_path)
    before = snapshot(run)
    code, out, _ = rerun(run, 0)
    assert code == 0 and 'round 0: done already' in out
    rec = json.loads((run / 'run.json').read_text())
    assert rec['rounds'] == 1
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k != 'run.json'} == {k: v for k, v in before.items() if k != 'run.json'}


@pytest.mark.slow
@pytest.mark.parametrize('key, value', [('threads', 7), ('kernels', 'portable'), ('torch', '1.13.0'),
                                        ('cpu', 'AVX2 fma avx2')])
def test_resuming_under_another_setup_goes_on_saying_so(strict_run, tmp_path, key, value):
    "A run may move to other threads, kernels, torch or CPU: one line names the change, run.json records it."
    run = copy_run(strict_run, tmp_path)
    rec = json.loads((run / 'run.json').read_text())
    rec['provenance'][key] = value
    (run / 'run.json').write_text(json.dumps(rec))
    code, out, err = rerun(run)
    assert code == 0, err
    note = [l for l in out.splitlines() if l.startswith('note: resuming')]
    assert len(note) == 1 and f'{key} {value!r} -> ' in note[0] and 'exact resume needs' in note[0], out
    moved = json.loads((run / 'run.json').read_text())
    assert moved['moves'] == [note[0].split(' under ', 1)[1].split(' (its numbers')[0]]
    assert moved['provenance'][key] != value


@pytest.mark.slow
def test_another_thread_count_is_a_move_not_another_run(strict_run, tmp_path):
    "threads is volatile: asking a finished run for threads=2 resumes it (here: nothing left to do)."
    run = copy_run(strict_run, tmp_path)
    code, out, err = rerun(run, threads=2)
    assert code == 0 and 'round 1: done already' in out, err


def test_an_unknown_kernel_choice_is_refused_before_anything_is_written(tmp_path):
    res = zls('run', '--name', 'k', '--out', tmp_path, '--rounds', 0, env=dict(os.environ, ZLS_KERNELS='fastest'))
    assert res.returncode == 2 and "ZLS_KERNELS='fastest' is invalid" in one_line(res.stderr)
    code, _, err = cli('run', '--name', 'k', '--out', tmp_path, '--set', 'kernels=fastest')
    assert code == 2 and "kernels='fastest' is invalid" in one_line(err)
    assert not (tmp_path / 'k').exists()


PROBE_ENV = {k: v for k, v in os.environ.items() if k not in ('ZLS_KERNELS', 'ATEN_CPU_CAPABILITY', 'MKL_CBWR')}


def test_importing_zls_leaves_torch_as_it_was():
    "No backend flag, environment variable or thread count changes when zls (every module) is imported."
    code = ('import json, os, torch, torchvision; state = lambda: [sorted(os.environ.items()), '
            'torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled(), torch.get_num_threads(), '
            'torch.backends.cpu.get_cpu_capability()]; before = state()\n'
            'import importlib, pkgutil, zls\n'
            '[importlib.import_module(f"zls.{m.name}") for m in pkgutil.iter_modules(zls.__path__)]\n'
            'print(json.dumps(state() == before))')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=PROBE_ENV)
    assert res.returncode == 0 and res.stdout.strip() == 'true', res.stderr[-2000:]


def test_portable_kernels_asked_for_after_torch_computed_are_refused_in_one_line():
    "Portable kernels must be chosen before torch's first computation; native ones are torch as it is."
    code = 'import torch; torch.ones(4, 4) @ torch.ones(4, 4); from zls.core import pin_threads; pin_threads(1, "{}")'
    res = subprocess.run([sys.executable, '-c', code.format('portable')], capture_output=True, text=True,
                         env=PROBE_ENV)
    assert res.returncode == 1 and 'portable CPU kernels were asked for, but' in res.stderr.splitlines()[-1]
    res = subprocess.run([sys.executable, '-c', code.format('')], capture_output=True, text=True, env=PROBE_ENV)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_a_round_runs_on_a_cpu_without_avx2(tmp_path, data):
    "torch's generic kernels (ATEN_CPU_CAPABILITY=default: what a CPU without AVX2, e.g. ARM, runs) finish a round."
    res = zls('run', '--name', 'generic', '--out', tmp_path, '--rounds', 1, '--no-report',
              *sets(**TINY, data_root=data), env=dict(PROBE_ENV, ATEN_CPU_CAPABILITY='default'))
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / 'generic'
    assert json.loads((run / 'run.json').read_text())['provenance']['cpu'].startswith('DEFAULT')
    setup = json.loads((run / 'round_1' / 'metrics.json').read_text())['setup']
    assert setup['kernels'].startswith('native (DEFAULT'), setup


@pytest.mark.slow
def test_a_round_runs_in_a_process_where_torch_computed_first(tmp_path, data):
    "The notebook order: torch computes, then zls is imported and a round runs in the same process."
    code = ('import sys, torch; torch.ones(8, 8) @ torch.ones(8, 8)\n'
            'from zls.pipeline import evaluate_round, label_round, prepare_round, train_round\n'
            'p = dict(' + ', '.join(f'{k}={v!r}' for k, v in TINY.items()) + f', data_root={str(data)!r})\n'
            'for k in (0, 1):\n'
            f'    r = prepare_round(p, run_dir={str(tmp_path / "run")!r}, k=k)\n'
            '    label_round(r); train_round(r); m = evaluate_round(r)\n'
            'print("hIoU", m["plain"]["hIoU"])')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=PROBE_ENV)
    assert res.returncode == 0 and 'hIoU' in res.stdout, res.stderr[-2000:]


@pytest.mark.slow
def test_with_threads_set_the_thread_environment_does_not_change_results(strict_run, tmp_path):
    "threads=1 under OMP_NUM_THREADS=1 and =4: torch's threads come from the parameter; threads=0 follows the env."
    metrics = {}
    for omp in ('1', '4'):
        res = zls('run', '--name', f'omp{omp}', '--out', tmp_path, '--rounds', 0, '--no-report',
                  *same_run(strict_run, threads=1), env=dict(os.environ, OMP_NUM_THREADS=omp))
        assert res.returncode == 0, res.stderr[-2000:]
        text = res.stdout + res.stderr  # what a user sees: the round's line and the table, nothing else
        assert 'round 0: mIoU seen' in text
        for noise in ('Kernel is running over TCP', 'KeyboardInterrupt', 'nan'): assert noise not in text, noise
        m = json.loads((tmp_path / f'omp{omp}' / 'round_0' / 'metrics.json').read_text())
        assert m['setup']['threads'] == 1
        metrics[omp] = json.dumps([m['plain'], [{k: v for k, v in e.items() if k != 'secs'} for e in m['log']]])
    assert metrics['1'] == metrics['4']
    assert json.loads((strict_run / 'round_0' / 'metrics.json').read_text())['plain'] == json.loads(metrics['1'])[0]
    assert json.loads((strict_run / 'run.json').read_text())['provenance']['threads'] == 1  # made under OMP=1


@pytest.mark.parametrize('name', ['../escaped', 'a/b', '..'])
def test_a_run_name_is_one_folder_inside_the_outputs_root(tmp_path, name):
    out = tmp_path / 'outputs'
    code, _, err = cli('run', '--name', name, '--out', out)
    assert code == 2 and f'name={name!r} is invalid: expected one plain folder name' in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_malformed_yaml_and_a_misspelt_parameter_are_one_line(tmp_path):
    cfg = tmp_path / 'p.yaml'
    cfg.write_text('name: tiny\niters0: [2\niters: 5\n')
    code, _, err = cli('run', '--config', cfg, '--out', tmp_path / 'o')
    assert code == 2 and f'{cfg}, line 3: not valid YAML' in one_line(err)
    code, _, err = cli('run', '--set', 'top_pp=50', '--out', tmp_path / 'o')
    assert code == 2 and "unknown parameter 'top_pp' (did you mean 'top_p'?)" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['p.yaml']


def test_gpu_check_says_there_is_no_gpu():
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is visible: make gpu-check runs for real')
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(['make', '--no-print-directory', 'gpu-check', f'GPU_PYTHON={sys.executable}'], cwd=root,
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert 'gpu-check: no CUDA GPU visible to this Python' in res.stderr


def test_a_leak_of_unseen_labels_into_training_stops_the_round(tmp_path, data, monkeypatch):
    "A label mapping that lets unseen classes into the training targets is caught before anything trains."
    from zls.core import DataError
    from zls.pipeline import prepare_round
    from zls.splits import Split
    honest = Split.lut
    monkeypatch.setattr(Split, 'lut', lambda self, hide_unseen=True: honest(self, hide_unseen=False))  # the leak
    with pytest.raises(DataError, match=r'^leak: \d+ training target pixels carry an unseen class'):
        prepare_round(dict(TINY, data_root=str(data)), run_dir=tmp_path / 'leaky', k=0)
    assert not (tmp_path / 'leaky' / 'round_0').exists(), 'nothing is written for a leaking round'
    monkeypatch.setattr(Split, 'lut', honest)
    audit = prepare_round(dict(TINY, data_root=str(data)), run_dir=tmp_path / 'honest', k=0).audit
    assert audit['unseen_target_pixels'] == 0 and 0 < audit['images_with_unseen'] <= TINY['n_train']
