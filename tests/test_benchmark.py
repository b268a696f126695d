"""The benchmark pipeline end to end at a tiny size, and every method through the driver on shapes."""
import json, subprocess, sys
import pytest
from pathlib import Path
import pandas as pd
import papermill as pm
from zls.benchmark import ENTRIES, pick
from zls.methods import rounds_of, run_config
from zls.pipeline import PIPELINES

pytestmark = pytest.mark.slow  # trains tiny runs

ZLS = str(Path(sys.executable).parent / 'zls')
TINY = dict(n_train=48, n_val=24, iters0=20, iters=10, batch_size=8, eval_batch=24)


def test_benchmark_template_parameters_are_documented():
    params = pm.inspect_notebook(str(PIPELINES / 'benchmark.ipynb'))
    assert {'name', 'seeds', 'out_root', 'n_train', 'iters0', 'iters'} <= set(params)
    assert all(p['help'] for p in params.values()), 'every parameter needs a comment'


# one entry of each kind: a reading entry, both branches, a semi-supervised pair, FS^4 and the entry reading it,
# and FS^4 started from the pretraining run (init)
KEYS = 'spnet,self-training,strict-top-p,supervised-16,pseudoseg-16,kmeans,fs4,fs4-ssl-colour'


def test_every_entry_is_a_valid_run():
    "Each entry's parameters (with the template's sizes) make a checked run configuration with its rounds."
    for e in ENTRIES:
        if e.reads: continue
        cfg = run_config(dict(TINY, **e.params, seed=0))
        rounds_of(cfg.method, e.rounds)


def test_tiny_benchmark_through_papermill(tmp_path):
    out = tmp_path / 'benchmark.ipynb'
    pm.execute_notebook(str(PIPELINES / 'benchmark.ipynb'), str(out), kernel_name='python3', progress_bar=False,
                        parameters=dict(TINY, name='bench', seeds='0', out_root=str(tmp_path), keys=KEYS,
                                        results=str(tmp_path / 'rows.csv'), results_unsup=str(tmp_path / 'u.csv')))
    root = tmp_path / 'bench'
    rows = pd.read_csv(root / 'benchmark.csv')
    assert list(rows['key']) == [e.key for e in pick(KEYS)]  # the entries asked for (and their sources), in order
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / 'rows.csv'), rows)  # the `results` copy
    by = rows.set_index('key')
    # the SPNet baseline is round 0 of the STRICT run; the branched runs share that very round 0
    strict0 = json.loads((root / 'strict-s0' / 'round_0' / 'metrics.json').read_text())
    assert by.loc['spnet', 'hIoU'] == strict0['plain']['hIoU'] and by.loc['spnet', 'round'] == 0
    strict0_bytes = (root / 'strict-s0' / 'round_0' / 'metrics.json').read_bytes()
    for k in ('self-training', 'strict-top-p'):
        assert (root / f'{k}-s0' / 'round_0' / 'metrics.json').read_bytes() == strict0_bytes
        assert by.loc[k, 'round'] == 2
    assert json.loads((root / 'self-training-s0' / 'run.json').read_text())['params']['views'] == 'identity'
    assert by[['seen', 'unseen', 'hIoU']].loc[['strict']].notna().all().all()
    assert by.loc['fs4', 'round'] == 1 and by.loc['kmeans', 'round'] == 0
    semi = ['supervised-16', 'pseudoseg-16']
    assert (by.loc[semi, 'round'] == 0).all()
    assert by[['mIoU']].loc[semi + ['kmeans', 'fs4']].notna().all().all()
    assert by.loc[['pseudoseg-16'], 'pseudo_mIoU'].notna().all()
    lists = [(root / f'{m}-16-s0' / 'round_0' / 'labeled.txt').read_text() for m in ('supervised', 'pseudoseg')]
    assert lists[0] == lists[1]  # the step-matched baseline trains on PseudoSeg's labelled list
    # FS^4 from the pretraining run of the same seed, scored on its view; references next to it
    ssl = json.loads((root / 'fs4-ssl-colour-s0' / 'run.json').read_text())['params']
    assert ssl['init_from'] == str((root / 'pretrain-s0' / 'round_0' / 'train.pt').resolve())
    m = json.loads((root / 'fs4-ssl-colour-s0' / 'round_1' / 'metrics.json').read_text())
    assert by.loc['fs4-ssl-colour', 'mIoU'] == m['views']['colour']['mIoU']
    unsup = pd.read_csv(tmp_path / 'u.csv')
    pd.testing.assert_frame_equal(unsup, pd.read_csv(root / 'unsupervised.csv'))
    parts = set(unsup['partition'])
    assert {'one cluster', 'k-means on raw RGB', 'colour oracle', 'FS^4 (round 1), self-supervised start'} <= parts
    assert any('majority matching' in p for p in parts)  # the over-clustering diagnostic of the pretrained features
    assert set(unsup[unsup.partition == 'FS^4 (round 1), self-supervised start']['view']) == {'colour'}
    assert pd.isna(by.loc['fs4', 'unseen'])  # clusters have no seen/unseen split
    for f in ('benchmark.md', 'benchmark.png'): assert (root / f).exists(), f
    assert 'PseudoSeg' in (root / 'benchmark.md').read_text()


def test_named_configurations_run_on_shapes(tmp_path):
    "`zls run --config NAME` with the shipped shapes configurations: each method through the same driver."
    for cfg, rounds in (('shapes-supervised', 0), ('shapes-pseudoseg', 0)):
        sets = [a for k, v in dict(TINY, data_root=str(tmp_path / 'data')).items() for a in ('--set', f'{k}={v}')]
        res = subprocess.run([ZLS, 'run', '--config', cfg, '--out', str(tmp_path), '--no-report', *sets],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        run = json.loads((tmp_path / cfg / 'run.json').read_text())
        assert run['rounds'] == rounds and run['params']['method'] == cfg.split('-')[1]
        assert 'mIoU' in res.stdout


def test_shipped_pseudoseg_configuration_is_the_benchmarks():
    "`zls run --config shapes-pseudoseg` runs what the benchmark's pseudoseg-31 row measured (one setting, two places)."
    from zls.cli import read_config
    shipped = {k: v for k, v in read_config('shapes-pseudoseg').items() if k not in ('name', 'rounds')}
    entry = next(e for e in ENTRIES if e.key == 'pseudoseg-31')
    assert run_config(shipped).identity() == run_config(entry.params).identity()
