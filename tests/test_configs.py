"""The paper's configurations run end to end, through papermill, on miniature trees in the official formats."""
import json, subprocess, sys
from pathlib import Path
import pytest
from zls.cocostuff import make_mini_cocostuff
from zls.voc import make_mini_voc

pytestmark = pytest.mark.slow  # trains tiny runs

ROOT = Path(__file__).resolve().parent.parent
ZLS = str(Path(sys.executable).parent / 'zls')
# what changes for a tiny CPU round: no local weights or SPNet vectors, a few steps on small crops
TINY = dict(embeddings='glove', emb_path='', pretrained_backbone='', iters0=2, iters=1, batch_size=2, crop=65,
            workers=0, output_stride=16, views='1,1f', ckpt_every=1, log_every=1)


@pytest.mark.parametrize('config, make', [('voc-strict', lambda d: make_mini_voc(d)),
                                          ('cocostuff-strict', lambda d: make_mini_cocostuff(d))])
def test_config_runs_on_miniature_tree(tmp_path, config, make):
    data = tmp_path / 'data'
    make(data)
    check = subprocess.run([ZLS, 'data', 'check', config.split('-')[0], '--root', str(data), '--miniature'],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    sets = [a for k, v in dict(TINY, data_root=str(data)).items() for a in ('--set', f'{k}={v}')]
    config_file = ROOT / 'pipelines' / 'configs' / f'{config}.yaml'
    out = subprocess.run([ZLS, 'run', '--config', str(config_file), '--name', config,
                          '--out', str(tmp_path / 'out'), '--rounds', '1', '--no-report', *sets],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / 'out' / config
    p = json.loads((run / 'run.json').read_text())['params']
    # from the config
    assert p['backbone'] == 'deeplabv2_resnet101' and p['optimizer'] == 'sgd' and p['freeze_bn'] is True
    for k in (0, 1):
        m = json.loads((run / f'round_{k}' / 'metrics.json').read_text())
        assert set(m['plain']) >= {'mIoU_seen', 'mIoU_unseen', 'hIoU'}
    assert any((run / 'round_1' / 'pseudo').glob('*.png'))


def test_data_check_reports_missing_tree(tmp_path):
    for ds in ('voc', 'cocostuff'):
        out = subprocess.run([ZLS, 'data', 'check', ds, '--root', str(tmp_path)], capture_output=True, text=True)
        assert out.returncode == 1 and 'problem(s)' in out.stdout, out.stdout + out.stderr
    assert 'VOCtrainval_11-May-2012.tar' in subprocess.run([ZLS, 'data', 'check', 'voc', '--root', str(tmp_path)],
                                                           capture_output=True, text=True).stdout


def test_pseudoseg_config_runs_on_miniature_voc(tmp_path):
    """PseudoSeg through the driver on mini VOC: the labelled pool is VOC `train`, the rest of train_aug unlabeled."""
    data = tmp_path / 'data'
    make_mini_voc(data)
    tiny = dict(TINY, data_root=str(data), ps_unlabeled_batch=2)
    del tiny['views']  # STRICT's
    sets = [a for k, v in tiny.items() for a in ('--set', f'{k}={v}')]
    out = subprocess.run([ZLS, 'run', '--config', 'voc-pseudoseg', '--out', str(tmp_path / 'out'), '--no-report',
                          *sets], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / 'out' / 'voc-pseudoseg'
    p = json.loads((run / 'run.json').read_text())
    assert p['rounds'] == 0 and p['params']['method'] == 'pseudoseg'  # one round: warm-up, then PseudoSeg
    assert p['params']['backbone'] == 'deeplabv3plus_resnet101'
    from zls.voc import read_ids
    labeled = (run / 'round_0' / 'labeled.txt').read_text().split()
    voc_train = read_ids(data / 'VOCdevkit' / 'VOC2012' / 'ImageSets' / 'Segmentation' / 'train.txt')
    assert len(labeled) == 1 and set(labeled) <= set(voc_train)  # 1/8 of the 4 clean train images, at least one
    ck = __import__('torch').load(run / 'round_0' / 'train.pt', weights_only=True)
    assert 'pseudoseg' in ck['meta']['model_args'] and any(k.startswith('classifier.') for k in ck['model'])
    m = json.loads((run / 'round_0' / 'metrics.json').read_text())
    assert 0 <= m['plain']['mIoU'] <= 100 and m['params']['background'] == 'seen'
    assert 0 <= m['pseudo_train']['pseudo_mIoU'] <= 100  # its pseudo-labels scored on unlabeled training images


def test_methods_run_on_miniature_voc(tmp_path):
    """FS^4 (no labels) and the supervised baseline through the same driver on the miniature VOC tree."""
    data = tmp_path / 'data'
    make_mini_voc(data)
    base = dict(TINY, dataset='voc', split='voc', data_root=str(data), eval_batch=1, output_stride=0)
    del base['views']  # STRICT's labeler option: neither method has one
    for method, extra in (('fs4', dict(fs4_init_images=4, fs4_sample_pixels=500)),
                          ('supervised', dict(background='seen', label_fraction=0.5))):
        sets = [a for k, v in dict(base, method=method, **extra).items() for a in ('--set', f'{k}={v}')]
        out = subprocess.run([ZLS, 'run', '--name', method, '--out', str(tmp_path / 'out'), '--no-report', *sets],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        run = tmp_path / 'out' / method
        rounds = json.loads((run / 'run.json').read_text())['rounds']
        last = json.loads((run / f'round_{rounds}' / 'metrics.json').read_text())
        assert 0 <= last['plain']['mIoU'] <= 100
    assert rounds == 0  # supervised trains once
    fs4 = json.loads((tmp_path / 'out' / 'fs4' / 'round_1' / 'metrics.json').read_text())
    voc_classes = __import__('zls.splits', fromlist=['VOC_CLASSES']).VOC_CLASSES
    assert set(fs4['matching'].values()) <= set(voc_classes)
    assert any((tmp_path / 'out' / 'fs4' / 'round_1' / 'pseudo').glob('*.png'))
