"""Independent cross-checks of zls.metrics: torchmetrics, a naive per-class reference, batching, devices, ranks.

What torchmetrics 1.9 does with absent classes (checked here, so a change in a later version shows up):
`MulticlassJaccardIndex(average=None, ignore_index=255)` gives **0.0** for a class whose union is empty
(no target and no predicted pixel), because its `zero_division` defaults to 0; zls gives NaN there. With
`zero_division=float('nan')` the two agree everywhere. Its `average='macro'` drops empty-union classes
from the mean, which equals zls's nanmean. A class predicted but never a target has IoU 0 in both.
Ignored targets drop the pixel entirely, prediction included, in both.
"""
from __future__ import annotations
import math
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zls.core import IGNORE_INDEX
from zls.metrics import (ConfusionMatrix, PseudoQuality, confusion_matrix, iou_per_class, iou_table,
                         pseudo_label_quality, summarize)
from zls.splits import Split, get_split

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def random_maps(seed: int, shape, n: int, *, target_classes, pred_classes, p_ignore=0.15):
    "Random target/prediction maps drawing from given class subsets, with a fraction of ignored targets."
    g = torch.Generator().manual_seed(seed)
    tc, pc = torch.tensor(target_classes), torch.tensor(pred_classes)
    target = tc[torch.randint(0, len(tc), shape, generator=g)]
    pred = pc[torch.randint(0, len(pc), shape, generator=g)]
    # make predictions partly right, so the IoUs are not all tiny
    right = (torch.rand(shape, generator=g) < 0.5) & torch.isin(target, pc)
    pred = torch.where(right, target, pred)
    target[torch.rand(shape, generator=g) < p_ignore] = IGNORE_INDEX
    return pred, target


def naive_iou(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    "Per-class IoU by explicit pixel masks, NaN for an empty union (the definition, no confusion matrix)."
    valid = (target != IGNORE_INDEX) & (target < n)
    out = np.full(n, np.nan)
    for c in range(n):
        tp = np.sum(valid & (pred == c) & (target == c))
        union = np.sum(valid & ((pred == c) | (target == c)))
        if union: out[c] = tp / union
    return out


CASES = [  # seed, shape, n, classes in the targets, classes in the predictions
    (0, (2, 16, 16), 5, range(5), range(5)),
    (1, (3, 31, 17), 8, range(6), range(7)),  # 6 predicted-only, 7 absent everywhere
    (2, (1, 64, 64), 21, [0, 3, 5, 8, 20], [0, 3, 4, 8, 19]),  # many absent, some target-only, some pred-only
    (3, (4, 8, 8), 3, [1], [0, 1, 2]),  # a single target class
    (4, (500,), 12, range(12), range(12)),  # a flat vector works too
]


@pytest.mark.parametrize('seed,shape,n,tcls,pcls', CASES)
def test_iou_matches_torchmetrics(seed, shape, n, tcls, pcls):
    # imported here: slow, and not needed by the rank workers
    from torchmetrics.classification import MulticlassJaccardIndex
    pred, target = random_maps(seed, shape, n, target_classes=list(tcls), pred_classes=list(pcls))
    ours = iou_per_class(confusion_matrix(pred, target, n))
    tm = MulticlassJaccardIndex(n, average=None, ignore_index=IGNORE_INDEX)(pred, target).double()
    defined = ~ours.isnan()
    empty = set(range(n)) - set(tcls) - set(pcls)
    assert sorted(torch.nonzero(~defined).flatten().tolist()) == sorted(empty)  # NaN exactly where the union is empty
    torch.testing.assert_close(ours[defined], tm[defined], atol=1e-6, rtol=0)
    assert (tm[~defined] == 0).all()  # torchmetrics' default zero_division=0
    tm_nan = MulticlassJaccardIndex(n, average=None, ignore_index=IGNORE_INDEX,
                                    zero_division=float('nan'))(pred, target)
    torch.testing.assert_close(ours, tm_nan.double(), atol=1e-6, rtol=0, equal_nan=True)
    tm_macro = MulticlassJaccardIndex(n, average='macro', ignore_index=IGNORE_INDEX)(pred, target)
    assert math.isclose(float(ours.nanmean()), float(tm_macro), abs_tol=1e-6)
    for c in set(pcls) - set(tcls):  # predicted, never a target: 0, not NaN
        assert ours[c].item() == 0.0 and tm[c].item() == 0.0


@pytest.mark.parametrize('seed,shape,n,tcls,pcls', CASES)
def test_iou_matches_naive_reference(seed, shape, n, tcls, pcls):
    pred, target = random_maps(seed, shape, n, target_classes=list(tcls), pred_classes=list(pcls))
    np.testing.assert_allclose(iou_per_class(confusion_matrix(pred, target, n)).numpy(),
                               naive_iou(pred.numpy(), target.numpy(), n), rtol=0, atol=1e-12)


def test_confusion_matrix_layout_and_skipped_targets():
    pred = torch.tensor([0, 2, 2, 1, 2, 0])
    target = torch.tensor([0, 1, 2, IGNORE_INDEX, 7, 1])  # 255 and 7 (>= n) are not counted, whatever the prediction
    m = confusion_matrix(pred, target, 3)
    assert m.tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]  # rows = target, cols = pred
    assert m.dtype == torch.long
    assert confusion_matrix(pred.to(torch.uint8), target.to(torch.uint8), 3).tolist() == m.tolist()
    # an explicit ignore_index inside the class range drops that target row
    assert confusion_matrix(pred, target, 3, ignore_index=0).tolist() == [[0, 0, 0], [1, 0, 1], [0, 0, 1]]


def test_bad_inputs_raise_clear_errors():
    t = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r'outside 0\.\.2'):
        confusion_matrix(torch.full((4, 4), IGNORE_INDEX), t, 3)
    with pytest.raises(ValueError, match='argmax'):
        confusion_matrix(torch.zeros(3, 4, 4), t, 3)
    with pytest.raises(ValueError, match='same shape'):
        confusion_matrix(t[:2], t, 3)
    with pytest.raises(ValueError, match='square'):
        iou_per_class(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='model classes'):
        summarize(torch.zeros(4, 4, dtype=torch.long), get_split('voc'))
    # a prediction of 255 on an *ignored* pixel is fine: it is not counted
    assert confusion_matrix(torch.tensor([IGNORE_INDEX, 0]), torch.tensor([IGNORE_INDEX, 0]), 3).sum() == 1


@pytest.mark.parametrize('background', ['ignore', 'seen'])
def test_summarize_matches_reference(background):
    split = get_split('voc', background=background)
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 21, (3, 40, 40), generator=g).to(torch.uint8)
    labels[:, :3] = IGNORE_INDEX  # void border
    target = split.encode(labels, train=False)
    # a model that is right 60% of the time, and never predicts the last unseen class
    n = split.n_classes
    guess = torch.randint(0, n - 1, target.shape, generator=g)
    pred = torch.where((torch.rand(target.shape, generator=g) < 0.6) & (target < n - 1), target, guess)
    mat = confusion_matrix(pred, target, n)
    ref = naive_iou(pred.numpy(), target.numpy(), n) * 100
    res = summarize(mat, split)
    s, u = np.nanmean(ref[split.seen_idx.numpy()]), np.nanmean(ref[split.unseen_idx.numpy()])
    valid = target.numpy() < n
    expected = dict(mIoU_seen=s, mIoU_unseen=u, hIoU=2 * s * u / (s + u), mIoU=np.nanmean(ref),
                    pixel_acc=100 * np.mean(pred.numpy()[valid] == target.numpy()[valid]))
    assert res.keys() == expected.keys()
    for k in expected: assert math.isclose(res[k], expected[k], rel_tol=1e-12), k
    # percent, and the never-predicted unseen class pulls U down
    assert 0 < res['mIoU_unseen'] < res['mIoU_seen'] <= 100
    tab = iou_table(mat, split)
    assert list(tab.index) == list(split.names)
    assert (tab['role'] == 'unseen').sum() == 5
    assert tab['n_gt'].sum() == tab['n_pred'].sum() == int(valid.sum())
    np.testing.assert_allclose(tab['IoU'].to_numpy(), ref, rtol=0, atol=1e-9)


def test_hiou_edge_cases():
    two = Split('two', ('a', 'b'), ('b',))
    assert summarize(torch.tensor([[0, 3], [3, 0]]), two)['hIoU'] == 0.0
    r = summarize(torch.tensor([[3, 0], [0, 0]]), two)
    assert math.isnan(r['mIoU_unseen']) and math.isnan(r['hIoU']) and r['mIoU_seen'] == 100.0
    assert math.isnan(summarize(torch.zeros(2, 2, dtype=torch.long), two)['pixel_acc'])


def test_accumulation_over_batches_equals_one_matrix():
    pred, target = random_maps(11, (6, 20, 24), 9, target_classes=range(8), pred_classes=range(9))
    acc = ConfusionMatrix(9)
    for i in range(0, 6, 2): acc.update(pred[i:i + 2], target[i:i + 2])
    assert torch.equal(acc.mat, confusion_matrix(pred, target, 9))
    assert torch.equal(acc.mat, sum(confusion_matrix(p, t, 9) for p, t in zip(pred, target)))
    acc.reset()
    assert acc.mat.sum() == 0 and acc.mat.shape == (9, 9)


def _pseudo_case(seed: int):
    "A labeler-like case: candidates = no ground truth, pseudo-labels on some candidates, truth incl. 255."
    g = torch.Generator().manual_seed(seed)
    n = 6
    hidden = torch.randint(0, n, (4, 16, 16), generator=g)
    hidden[torch.rand(hidden.shape, generator=g) < 0.2] = IGNORE_INDEX  # background / void: no model class
    cand = (hidden >= 3) | (hidden == IGNORE_INDEX)  # no ground truth: unseen 3..5, and background or void
    guess = torch.randint(3, n, hidden.shape, generator=g)
    pseudo = torch.where(torch.rand(hidden.shape, generator=g) < 0.5, hidden, guess)
    pseudo[(torch.rand(hidden.shape, generator=g) < 0.3) | ~cand] = IGNORE_INDEX
    return pseudo, hidden, cand, n


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_pseudo_quality_matches_reference(seed):
    pseudo, hidden, cand, n = _pseudo_case(seed)
    tab = pseudo_label_quality(pseudo, hidden, n, candidates=cand)
    p, h, c = pseudo.numpy(), hidden.numpy(), cand.numpy()
    for k in range(n):
        n_pseudo = np.sum(p == k)
        n_true = np.sum(c & (h == k))
        n_correct = np.sum((p == k) & (h == k))
        n_covered = np.sum(c & (h == k) & (p != IGNORE_INDEX))
        row = tab.loc[str(k)]
        assert (row.n_pseudo, row.n_true, row.n_correct, row.n_covered) == (n_pseudo, n_true, n_correct, n_covered)
        for col, num, den in (('precision', n_correct, n_pseudo), ('recall', n_correct, n_true),
                              ('coverage', n_covered, n_true)):
            want = 100 * num / den if den else np.nan
            np.testing.assert_allclose(row[col], want, rtol=1e-12, equal_nan=True)
    all_ = tab.loc['all']
    labelled = p != IGNORE_INDEX
    assert all_.n_pseudo == labelled.sum() and all_.n_true == c.sum()
    assert math.isclose(all_.precision, 100 * np.sum(labelled & (p == h)) / labelled.sum())  # over all pseudo-labels
    assert math.isclose(all_.coverage, 100 * labelled.sum() / c.sum())  # fraction of candidates labelled
    assert tab.loc[[str(k) for k in range(3)], 'n_true'].sum() == 0  # seen classes are not candidates here


def test_pseudo_quality_accumulates_and_rejects_bad_input():
    import pandas as pd
    pseudo, hidden, cand, n = _pseudo_case(5)
    acc = PseudoQuality(n)
    for i in range(4): acc.update(pseudo[i], hidden[i], cand[i])
    pd.testing.assert_frame_equal(acc.table(), pseudo_label_quality(pseudo, hidden, n, candidates=cand))
    bad = pseudo.clone()
    bad[~cand] = 0
    with pytest.raises(ValueError, match='outside the candidate pixels'):
        pseudo_label_quality(bad, hidden, n, candidates=cand)
    with pytest.raises(ValueError, match='bool mask'):
        pseudo_label_quality(pseudo, hidden, n, candidates=cand.long())
    with pytest.raises(ValueError, match='pseudo holds values'):
        pseudo_label_quality(torch.where(cand, 9, IGNORE_INDEX), hidden, n, candidates=cand)


@pytest.mark.parametrize('device', DEVICES)
def test_results_stay_on_the_input_device(device):
    pred, target = random_maps(3, (2, 8, 8), 4, target_classes=range(4), pred_classes=range(4))
    pred, target = pred.to(device), target.to(device)
    m = confusion_matrix(pred, target, 4)
    assert m.device.type == device
    assert iou_per_class(m).device.type == device
    acc = ConfusionMatrix(4).update(pred, target)  # follows the first batch
    assert acc.mat.device.type == device
    assert ConfusionMatrix(4, device='cpu').update(pred, target).mat.device.type == 'cpu'  # an explicit device wins
    split = Split('t', ('a', 'b', 'c', 'd'), ('d',))
    assert summarize(m, split)['mIoU'] == summarize(m.cpu(), split)['mIoU']
    pq = PseudoQuality(4).update(torch.full_like(pred, IGNORE_INDEX), target, torch.ones_like(target, dtype=torch.bool))
    assert pq.counts.device.type == device


def _rank_worker(rank: int, world: int, store: str, out: str):
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world)
    try:
        pred, target = random_maps(21, (4, 12, 12), 5, target_classes=range(5), pred_classes=range(5))
        acc = ConfusionMatrix(5)
        for i in range(rank, 4, world): acc.update(pred[i], target[i])  # each rank its own share
        acc.reduce_()
        try:
            acc.reduce_()
            twice = 'no error'
        except RuntimeError as e: twice = str(e)
        pseudo, hidden, cand, n = _pseudo_case(3)
        pq = PseudoQuality(n)
        for i in range(rank, 4, world): pq.update(pseudo[i], hidden[i], cand[i])
        pq.reduce_()
        torch.save(dict(mat=acc.mat, counts=pq.counts, twice=twice), f'{out}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_reduce_sums_over_ranks_once(tmp_path):
    world = 2
    # fork is much faster than spawn (no re-import of torch); spawn once CUDA is initialized, where fork is unsafe
    method = 'fork' if 'fork' in mp.get_all_start_methods() and not torch.cuda.is_initialized() else 'spawn'
    mp.start_processes(_rank_worker, args=(world, str(tmp_path / 'store'), str(tmp_path)), nprocs=world, join=True,
                       start_method=method)
    pred, target = random_maps(21, (4, 12, 12), 5, target_classes=range(5), pred_classes=range(5))
    full = confusion_matrix(pred, target, 5)
    pseudo, hidden, cand, n = _pseudo_case(3)
    full_pq = PseudoQuality(n).update(pseudo, hidden, cand).counts
    for r in range(world):
        res = torch.load(tmp_path / f'rank{r}.pt')
        assert torch.equal(res['mat'], full)  # every rank holds the global matrix, counted exactly once
        assert torch.equal(res['counts'], full_pq)
        assert 'already called' in res['twice']
