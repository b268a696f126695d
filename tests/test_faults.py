"""Bad input and faults: one clear line naming the parameter or file, the right exit code, nothing produced lost.

Exit code 2 means a parameter (or path argument) to fix, 1 a data error, a failed round or a full disk. Each case
that touches an existing run checks that every file the run had produced is byte-identical afterwards.
"""
import contextlib, errno, hashlib, io, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from zls.cli import main
from zls.core import load_mask, save_mask
from zls.methods import METHODS
from zls.shapes import make_shapes
from conftest import TINY

ZLS = str(Path(sys.executable).parent / 'zls')


def sets(**params) -> list[str]:
    return [a for k, v in params.items() for a in ('--set', f'{k}={v}')]


def cli(*argv) -> tuple[int, str, str]:
    "Run `zls` in this process: exit code, stdout, stderr."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


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
    ('threads=0', 'threads=0 is invalid'),
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
def test_resuming_with_other_threads_is_refused(strict_run, tmp_path):
    run = copy_run(strict_run, tmp_path)
    before = snapshot(run)
    code, _, err = rerun(run, threads=2)
    assert code == 2 and "other values of ['threads']" in one_line(err)
    assert snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize('key, value', [('torch', '1.13.0'), ('kernels', 'native (AVX512, MKL unpinned, oneDNN on)')])
def test_resuming_under_another_setup_is_refused(strict_run, tmp_path, key, value):
    run = copy_run(strict_run, tmp_path)
    rec = json.loads((run / 'run.json').read_text())
    rec['provenance'][key] = value
    (run / 'run.json').write_text(json.dumps(rec))
    before = snapshot(run)
    code, _, err = rerun(run)
    assert code == 2 and f"another setup ({key} '{value}' -> " in one_line(err)
    assert snapshot(run) == before


def test_an_unknown_kernel_choice_is_refused_before_anything_is_written(tmp_path):
    res = zls('run', '--name', 'k', '--out', tmp_path, '--rounds', 0, env=dict(os.environ, ZLS_KERNELS='fastest'))
    assert res.returncode == 2 and "ZLS_KERNELS='fastest' is invalid" in one_line(res.stderr)
    assert not (tmp_path / 'k').exists()


def test_torch_computing_before_zls_is_imported_is_caught():
    "Portable kernels must be chosen before torch's first computation; a process that computed first is told so."
    code = 'import torch; torch.ones(4, 4) @ torch.ones(4, 4); from zls.core import pin_threads; pin_threads(1)'
    env = {k: v for k, v in os.environ.items() if k not in ('ATEN_CPU_CAPABILITY', 'MKL_CBWR')}  # as zls set them here
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and 'zls needs its portable CPU kernels' in res.stderr.splitlines()[-1]
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env=dict(env, ZLS_KERNELS='native'))
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_the_thread_environment_does_not_change_results(strict_run, tmp_path):
    "The same run under OMP_NUM_THREADS=1 and =4: torch's threads come from the recorded `threads`, not the env."
    metrics = {}
    for omp in ('1', '4'):
        res = zls('run', '--name', f'omp{omp}', '--out', tmp_path, '--rounds', 0, '--no-report', *same_run(strict_run),
                  env=dict(os.environ, OMP_NUM_THREADS=omp))
        assert res.returncode == 0, res.stderr[-2000:]
        text = res.stdout + res.stderr  # what a user sees: the round's line and the table, nothing else
        assert 'round 0: mIoU seen' in text
        for noise in ('Kernel is running over TCP', 'KeyboardInterrupt', 'nan'): assert noise not in text, noise
        m = json.loads((tmp_path / f'omp{omp}' / 'round_0' / 'metrics.json').read_text())
        metrics[omp] = json.dumps([m['plain'], [{k: v for k, v in e.items() if k != 'secs'} for e in m['log']]])
    assert metrics['1'] == metrics['4']
    assert json.loads((strict_run / 'round_0' / 'metrics.json').read_text())['plain'] == json.loads(metrics['1'])[0]


def test_gpu_check_says_there_is_no_gpu():
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is visible: make gpu-check runs for real')
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(['make', '--no-print-directory', 'gpu-check', f'GPU_PYTHON={sys.executable}'], cwd=root,
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert 'gpu-check: no CUDA GPU visible to this Python' in res.stderr
