"""zls.distributed with 2 CPU processes (gloo): evaluate, label_offline and train agree with 1-process runs."""
import os, socket
from pathlib import Path
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from zls.core import seed_everything
from zls.datasets import SegFolder
from zls.embeddings import class_embeddings
from zls.labeler import PseudoDataset, label_offline
from zls.model import build_model
from zls.shapes import make_shapes
from zls.splits import get_split
from zls.config import TrainConfig
from zls.train import evaluate, load_checkpoint, train

pytestmark = pytest.mark.slow  # trains tiny runs

WORLD = 2
# shard sizes (8 and 6 images per rank) divide by the batch size, so every rank meets the same batches
N_TRAIN, N_VAL, SIZE, BATCH = 16, 12, 32, 2
OPTS = TrainConfig(batch_size=4, crop=32, optimizer='adamw', lr=2e-3, weight_decay=1e-4, log_every=2, ckpt_every=2,
                   device='cpu')
TRAIN_KW = dict(iters=4, seed=0, progress=False)


def setup(root: Path):
    "The tiny shapes sets, the split and a freshly built, seeded 'small' model over every class."
    data = make_shapes(root / 'data', n_train=N_TRAIN, n_val=N_VAL, size=SIZE)
    split = get_split('shapes')
    seed_everything(0)
    model = build_model('small', class_embeddings(split.names, 'attributes')).eval()
    return SegFolder(data, 'train'), SegFolder(data, 'val'), split, model


def worker(rk: int, root: Path, port: int):
    "One of the 2 ranks: joins the group from torchrun-style variables, then evaluates, labels and trains."
    os.environ.update(RANK=str(rk), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rk), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from zls import distributed as zd
    assert zd.init_distributed(backend='gloo') == (rk, WORLD)
    try:
        train_set, val_set, split, model = setup(root)
        cms = evaluate(model, val_set, split, gammas=(0.0, 0.5), batch_size=BATCH, device='cpu')
        q = label_offline(model, train_set, split, root / 'pseudo2', batch_size=BATCH, device='cpu', progress=False)
        seed_everything(0)
        student = build_model('small', class_embeddings(split.names, 'attributes'))
        ds = PseudoDataset(train_set, split)
        first = train(student, ds, OPTS, ckpt=root / 'ck2' / 'train.pt', stop_at=2, classes=split.seen_idx, **TRAIN_KW)
        seed_everything(0)
        student = build_model('small', class_embeddings(split.names, 'attributes'))
        second = train(student, ds, OPTS, ckpt=root / 'ck2' / 'train.pt', classes=split.seen_idx, **TRAIN_KW)
        results = dict(cms=cms, quality=q, first=first, second=second, weights=student.state_dict())
        torch.save(results, root / f'rank{rk}.pt')
    finally:
        zd.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "1-process references, then the same calls in 2 spawned gloo processes."
    root = tmp_path_factory.mktemp('dist')
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_set, val_set, split, model = setup(root)
        ref = dict(cms=evaluate(model, val_set, split, gammas=(0.0, 0.5), batch_size=BATCH, device='cpu'),
                   quality=label_offline(model, train_set, split, root / 'pseudo1', batch_size=BATCH, device='cpu',
                                         progress=False))
    finally: torch.set_num_threads(old)
    mp.spawn(worker, args=(root, free_port()), nprocs=WORLD, join=True)
    out = [torch.load(root / f'rank{r}.pt', weights_only=False) for r in range(WORLD)]
    return root, train_set, ref, out


def test_evaluate_equals_one_process(runs):
    root, train_set, ref, out = runs
    for o in out:  # every rank gets the summed matrix, counted once
        for g in (0.0, 0.5):
            assert torch.equal(o['cms'][g], ref['cms'][g]), f'gamma {g}: 2-process confusion matrix differs'
    assert ref['cms'][0.0].sum() > 0


def test_label_offline_equals_one_process(runs):
    root, train_set, ref, out = runs
    one, two = root / 'pseudo1', root / 'pseudo2'
    names = sorted(p.name for p in one.glob('*.png'))
    assert len(names) == N_TRAIN and names == sorted(p.name for p in two.glob('*.png'))
    for n in names: assert (one / n).read_bytes() == (two / n).read_bytes(), f'{n} differs'
    assert not [p for p in two.iterdir() if p.name.startswith('.')], 'no temporary files left'
    pd.testing.assert_frame_equal(pd.read_csv(one / 'quality.csv'), pd.read_csv(two / 'quality.csv'))
    for o in out: pd.testing.assert_frame_equal(o['quality'], ref['quality'])
    assert ref['quality'].loc['all', 'n_pseudo'] > 0


def test_train_two_processes_checkpoint_and_resume(runs):
    root, train_set, ref, out = runs
    files = sorted(p.name for p in (root / 'ck2').iterdir())
    assert files == ['tb', 'train.pt', 'train_log.csv'], f'one checkpoint and one log, by rank 0 only; found {files}'
    steps = pd.read_csv(root / 'ck2' / 'train_log.csv')['step'].tolist()
    assert steps == [1, 2, 3, 4], f'each step once, though two ranks trained and the second call resumed: {steps}'
    ck = load_checkpoint(root / 'ck2' / 'train.pt')
    assert ck['step'] == 4 and [r['step'] for r in ck['meta']['log']] == [2, 4]
    for o in out:
        assert o['first']['start'] == 0 and not o['first']['skipped']
        assert o['second']['start'] == 2 and not o['second']['skipped'], 'the second call resumes at step 2'
    for k, v in out[0]['weights'].items():  # DDP keeps the ranks identical, and rank 0 saved them
        assert torch.equal(v, out[1]['weights'][k]), k
        assert torch.equal(v, ck['model'][k]), k


def test_train_refuses_uneven_batch(runs, monkeypatch):
    root, train_set, ref, out = runs
    import zls.train as zt
    monkeypatch.setattr(zt, 'world_size', lambda: 3)
    split = get_split('shapes')
    with pytest.raises(ValueError, match='multiple of the number of processes'):
        zt.train(build_model('small', class_embeddings(split.names, 'attributes')), PseudoDataset(train_set, split),
                 TrainConfig(batch_size=4), iters=1, seed=0)
