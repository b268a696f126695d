"""The STRICT pipeline through papermill at a tiny size: templates, driver, failure, kill and resume, CLI."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import papermill as pm
import psutil
import pytest
from zls.methods import run_config
import pandas as pd
from zls.pipeline import PIPELINES, RoundFailed, run_rounds
from zls.report import example_grid
from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
ZLS = str(Path(sys.executable).parent / 'zls')


def test_round_template_takes_the_run_folder_only():
    "round.ipynb's parameters name the run folder and the round; the configuration itself comes from run.json."
    params = pm.inspect_notebook(str(PIPELINES / 'round.ipynb'))
    assert set(params) == {'run_dir', 'round_index', 'generator_ckpt'}
    for k, v in params.items(): assert v['help'], f'round.ipynb parameter {k} needs a comment'


@pytest.mark.slow
def test_tiny_run_through_papermill(strict_run):
    run = strict_run
    data_root = json.loads((run / 'run.json').read_text())['params']['data_root']
    for f in ('run.json', 'round_0.ipynb', 'round_1.ipynb', 'report.ipynb', 'results.md', 'results.csv',
              'rounds.png', 'pseudo_quality.png', 'curves.png', 'examples.png', 'round_0/metrics.json',
              'round_1/metrics.json', 'round_1/pseudo/quality.csv', 'round_1/pseudo_identity/quality.csv',
              'round_0/train_log.csv', 'round_1/train_log.csv'):
        assert (run / f).exists(), f
    assert list(pd.read_csv(run / 'round_0' / 'train_log.csv')['step']) == list(range(1, TINY['iters0'] + 1))
    assert any((run / 'round_1' / 'tb').glob('events.out.tfevents.*'))  # TensorBoard's files
    fig = example_grid(run, n=2)
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert 'unlabeled / not scored' in labels and any(l.split()[0] in ('red', 'green', 'blue', 'yellow')
                                                      for l in labels), labels  # each colour drawn is named
    m1 = json.loads((run / 'round_1/metrics.json').read_text())
    assert m1['params']['iters'] == 20
    shown = (run / 'round_1.ipynb').read_text()  # the executed round shows every parameter it ran with
    for k, v in run_config(TINY).flat().items(): assert f'{k}' in shown, k
    expected = dict(run_config(TINY).flat(), data_root=data_root)
    assert json.loads((run / 'run.json').read_text())['params'] == expected
    rows = {r['class']: r for r in m1['pseudo']}
    assert {'red cross', 'green triangle', 'blue square', 'yellow circle', 'all'} <= set(rows)
    assert rows['all']['n_pseudo'] > 0, 'round 1 must produce pseudo-labels'
    assert rows['red circle']['n_pseudo'] == 0, 'pseudo-labels are unseen classes only'
    # a second call finds every round done and trains nothing
    t0 = time.time()
    table = run_rounds(run.name, rounds=1, out_root=run.parent, data_root=data_root, report=False, **TINY)
    assert time.time() - t0 < 5
    assert list(table.index) == [0, 1] and 0 <= table.loc[1, 'unseen'] <= 100


@pytest.mark.slow
def test_failed_round_keeps_notebook(tmp_path):
    with pytest.raises(RoundFailed, match='keeps|kept') as e:
        run_rounds('bad', rounds=0, out_root=tmp_path, data_root=str(tmp_path / 'data'),
                   **dict(TINY, backbone='resnet9'))
    assert "unknown backbone 'resnet9'" in str(e.value)
    assert (tmp_path / 'bad' / 'round_0.ipynb').exists()


def _zls_run(out, name, extra=()):
    params = dict(TINY, iters0=200, ckpt_every=25, data_root=str(out / 'data'))
    sets = [a for k, v in params.items() for a in ('--set', f'{k}={v}')]
    return [ZLS, 'run', '--name', name, '--out', str(out), '--rounds', '1', '--no-report', *sets, *extra]


@pytest.fixture(scope='module')
def straight(tmp_path_factory) -> Path:
    "The tiny run of `_zls_run`, uninterrupted: what a stopped and resumed run must end with."
    out = tmp_path_factory.mktemp('straight')
    subprocess.run(_zls_run(out, 'straight'), check=True, capture_output=True)
    return out / 'straight'


def _first_checkpoint(proc, run: Path) -> Path:
    ckpt = run / 'round_0' / 'train.pt'
    deadline = time.time() + 300
    while not ckpt.exists():
        assert proc.poll() is None and time.time() < deadline, 'the run ended before its first checkpoint'
        time.sleep(0.2)
    time.sleep(1.0)
    return ckpt


def _same_metrics(a: Path, b: Path):
    for k in (0, 1):
        ma, mb = (json.loads((r / f'round_{k}' / 'metrics.json').read_text()) for r in (a, b))
        assert ma['plain'] == mb['plain'] and ma['calibrated'] == mb['calibrated'], f'round {k} differs after resuming'
        assert ma.get('pseudo') == mb.get('pseudo')


@pytest.mark.slow
def test_kill_and_resume_gives_same_metrics(tmp_path, straight):
    "Kill a run mid-round (driver and kernel), run it again: the metrics equal an uninterrupted run's."
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen(_zls_run(tmp_path, 'killed'), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = _first_checkpoint(proc, tmp_path / 'killed')
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    proc.wait()
    assert not (tmp_path / 'killed' / 'round_0' / 'metrics.json').exists(), 'the kill came too late to test resuming'
    import torch
    step = torch.load(ckpt, weights_only=True)['step']
    assert 0 < step < 200
    out = subprocess.run(_zls_run(tmp_path, 'killed'), check=True, env=env, capture_output=True, text=True)
    assert 'round 0' in out.stdout
    _same_metrics(straight, tmp_path / 'killed')


@pytest.mark.slow
def test_ctrl_c_stops_the_run_at_once_and_the_same_command_resumes(tmp_path, straight):
    "SIGINT to the run's process group (what Ctrl-C in a terminal sends): every process ends within 10 s, one line."
    proc = subprocess.Popen(_zls_run(tmp_path, 'stopped'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    _first_checkpoint(proc, tmp_path / 'stopped')
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert any('ipykernel' in ' '.join(p.cmdline()) for p in family), 'the round runs in a papermill kernel'
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.time() - t0 < 10
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith('zls: interrupted in round 0') and 'run the same command again to resume' in last, err
    assert 'is kept' in last
    gone, alive = psutil.wait_procs(family, timeout=2)
    assert not alive, f'processes left behind: {alive}'
    assert not (tmp_path / 'stopped' / 'round_0' / 'metrics.json').exists(), 'stopped too late to test resuming'
    out = subprocess.run(_zls_run(tmp_path, 'stopped'), check=True, capture_output=True, text=True)
    assert 'resuming at step' in out.stdout + out.stderr or 'round 0' in out.stdout
    _same_metrics(straight, tmp_path / 'stopped')


def test_cli_help_and_bad_parameters(tmp_path):
    out = subprocess.run([ZLS, 'run', '--help'], capture_output=True, text=True)
    assert out.returncode == 0 and '--set KEY=VALUE' in out.stdout
    bad = subprocess.run([ZLS, 'run', '--out', str(tmp_path), '--set', 'iters=lots'], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "zls: error: parameter iters expects a int, got 'lots'"
    bad = subprocess.run([ZLS, 'run', '--out', str(tmp_path), '--set', 'lerning_rate=1'],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown parameter 'lerning_rate'" in bad.stderr
    assert not any(tmp_path.iterdir()), 'a rejected command must not create anything'


@pytest.mark.slow
def test_driver_runs_rounds_in_two_processes(tmp_path):
    "nproc=2: each round runs under torchrun (gloo on CPU) and leaves the same files as a notebook round."
    table = run_rounds('ddp', rounds=1, out_root=tmp_path, data_root=str(tmp_path / 'data'), report=False,
                       **dict(TINY, nproc=2))
    run = tmp_path / 'ddp'
    assert list(table.index) == [0, 1]
    for f in ('round_0.log', 'round_1.log', 'round_0/metrics.json', 'round_1/metrics.json',
              'round_1/pseudo/quality.csv'):
        assert (run / f).exists(), f
    assert len(list((run / 'round_1' / 'pseudo').glob('*.png'))) == TINY['n_train']


@pytest.mark.slow
def test_cli_eval_and_labels(strict_run, tmp_path):
    "`zls eval` re-evaluates a round checkpoint; `zls labels` writes pseudo-labels and never overwrites a round's."
    run = strict_run
    ev = subprocess.run([ZLS, 'eval', str(run / 'round_1' / 'train.pt'), '--gamma', '0', '--gamma', '0.6',
                         '--views', '1,1f,1.5', '--csv', str(tmp_path / 'ev.csv'), '--label-view', 'colour'],
                        capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    m = json.loads((run / 'round_1' / 'metrics.json').read_text())
    assert f"{m['plain']['hIoU']:.1f}" in ev.stdout and f"{m['calibrated']['hIoU']:.1f}" in ev.stdout
    assert '| views (1,1f,1.5) |' in ev.stdout and '| gamma 0.6 |' in ev.stdout
    rows = pd.read_csv(tmp_path / 'ev.csv')
    assert list(rows['evaluation']) == ['gamma 0.0', 'gamma 0.6', 'views (1,1f,1.5)', 'gamma 0.0, colour view']
    assert set(rows['round']) == {1} and rows['mIoU'].iloc[-1] >= rows['mIoU'].iloc[0]  # colour is the easier half
    assert rows.loc[0, 'hIoU'] == m['plain']['hIoU']  # the run's own evaluation, to the last digit
    again = subprocess.run([ZLS, 'labels', str(run), '--round', '1'], capture_output=True, text=True)
    assert again.returncode == 2 and 'already holds pseudo-labels' in again.stderr
    out = tmp_path / 'relabel'
    lb = subprocess.run([ZLS, 'labels', str(run), '--round', '1', '--out', str(out)], capture_output=True, text=True)
    assert lb.returncode == 0, lb.stderr
    for png in (run / 'round_1' / 'pseudo').glob('*.png'):  # the same generator and views give the same labels
        assert (out / png.name).read_bytes() == png.read_bytes()
    bad = subprocess.run([ZLS, 'eval', str(tmp_path / 'nope.pt')], capture_output=True, text=True)
    assert bad.returncode == 2 and 'does not exist' in bad.stderr


@pytest.mark.slow
def test_relative_outputs_root(tmp_path, monkeypatch):
    "Rounds run inside the run folder, so a relative outputs root must still find its checkpoints."
    monkeypatch.chdir(tmp_path)
    table = run_rounds('rel', rounds=1, out_root='runs', data_root=str(tmp_path / 'data'), report=False, **TINY)
    assert list(table.index) == [0, 1] and (tmp_path / 'runs' / 'rel' / 'round_1' / 'metrics.json').exists()
