"""VOC 2012 + SBD formats on miniature trees: .mat labels, train_aug, check_voc, background modes, archives."""
import hashlib, io, tarfile
import numpy as np
import pytest
import torch
from zls.core import IGNORE_INDEX
from zls.datasets import check_archive, download, file_md5, unpack
from zls.splits import VOC_CLASSES, VOC_UNSEEN, get_split
from zls.voc import (VOCSegmentation, check_ok, check_voc, load_sbd_mat, make_mini_voc, prepare_voc, save_sbd_mat,
                     train_aug_ids, VOC_ARCHIVE, SBD_ARCHIVE)


@pytest.fixture(scope='module')
def mini(tmp_path_factory):
    return make_mini_voc(tmp_path_factory.mktemp('voc'))


def test_mat_round_trip_through_loader(tmp_path, mini):
    vr, sr = mini
    seg = np.random.default_rng(0).integers(0, 21, (6, 9)).astype(np.uint8)
    test_eq_arr = lambda a, b: np.testing.assert_array_equal(a, b)
    test_eq_arr(load_sbd_mat(save_sbd_mat(tmp_path / 'x.mat', seg)), seg)
    ds = VOCSegmentation(vr, sr)
    i = ds.names.index('2008_000006')  # SBD only: read from the .mat
    assert not (vr / 'SegmentationClass/2008_000006.png').exists()
    test_eq_arr(ds[i]['label'].numpy(), load_sbd_mat(sr / 'cls/2008_000006.mat'))
    assert IGNORE_INDEX not in ds[i]['label'] and ds[i]['label'].max() <= 20
    assert IGNORE_INDEX in ds[ds.names.index('2008_000000')]['label']  # VOC's png wins for ids in both
    for i in range(len(ds)): assert torch.equal(ds.label(i), ds[i]['label'])  # the label alone, png or .mat


def test_train_aug_logic(mini):
    assert train_aug_ids(['b', 'a', 'v'], ['c', 'a'], ['t', 'b'], ['v', 'x']) == ['a', 'b', 'c', 't']
    assert train_aug_ids([], [], [], []) == []
    vr, sr = mini
    names = VOCSegmentation(vr, sr).names
    assert names == sorted(set(names)) and len(names) == 8
    assert '2008_000004' not in names  # in SBD val and VOC val: excluded
    assert {'2008_000000', '2008_000006'} <= set(names)  # VOC train + SBD, and SBD only


def test_check_complete_empty_partial(tmp_path, mini):
    vr, sr = mini
    assert check_ok(check_voc(vr, sr, official=False))
    strict = check_voc(vr, sr)
    assert not check_ok(strict) and strict.item.iloc[-1] == 'counts are the official ones' and not strict.ok.iloc[-1]
    empty = check_voc(tmp_path / 'e/VOCdevkit/VOC2012', tmp_path / 'e/SBD/benchmark_RELEASE/dataset', official=False)
    assert not empty.ok.any()
    assert 'VOCtrainval_11-May-2012.tar (1,999,639,040 bytes' in empty.fix[0] and f'into {tmp_path}/e ' in empty.fix[0]
    pv, ps = make_mini_voc(tmp_path / 'p')
    (pv / 'JPEGImages/2008_000007.jpg').unlink()
    bad = check_voc(pv, ps, official=False).query('not ok')
    assert 'train_aug ids with an image in JPEGImages' in bad.item.tolist()
    assert any(f'{pv}/JPEGImages/2008_000007.jpg' in f for f in bad.fix)


@pytest.mark.parametrize('background', ['ignore', 'seen'])
def test_background_modes(mini, background):
    vr, sr = mini
    ds = VOCSegmentation(vr, sr)
    lab = torch.cat([ds[i]['label'].flatten() for i in range(len(ds))])
    split = get_split('voc', background=background)
    enc = split.encode(lab)
    unseen = torch.isin(lab, torch.tensor([VOC_CLASSES.index(c) for c in VOC_UNSEEN]))
    assert unseen.any() and (lab == 0).any()
    if background == 'ignore':
        assert (enc[unseen | (lab == 0)] == IGNORE_INDEX).all()
    else:
        assert (enc[unseen] == split.bg_idx).all() and (enc[lab == 0] == split.bg_idx).all()
    assert (enc[lab == IGNORE_INDEX] == IGNORE_INDEX).all()
    assert (enc[lab == 15] == split.names.index('person')).all()


def test_archives(tmp_path):
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd/a.txt').write_text('alpha')
    with tarfile.open(tmp_path / 'a.tgz', 'w:gz') as t: t.add(tmp_path / 'd', 'd')
    md5, size = file_md5(tmp_path / 'a.tgz'), (tmp_path / 'a.tgz').stat().st_size
    assert md5 == hashlib.md5((tmp_path / 'a.tgz').read_bytes()).hexdigest()
    check_archive(tmp_path / 'a.tgz', md5=md5, size=size)
    assert (unpack(tmp_path / 'a.tgz', tmp_path / 'out') / 'd/a.txt').read_text() == 'alpha'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]
    corrupt = bytearray((tmp_path / 'a.tgz').read_bytes())
    corrupt[20] ^= 0xFF
    (tmp_path / 'c.tgz').write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match='corrupt or incomplete'):
        check_archive(tmp_path / 'c.tgz', md5=md5, size=size)
    with pytest.raises(ValueError, match='corrupt or incomplete'):
        check_archive(tmp_path / 'c.tgz', md5=md5, size=size + 1)
    with pytest.raises(FileNotFoundError, match='not found: download it from http://x/y.tar'):
        check_archive(tmp_path / 'y.tar', md5=md5, url='http://x/y.tar')
    with tarfile.open(tmp_path / 'evil.tar', 'w') as t:
        info = tarfile.TarInfo('d/../../escape.txt')
        info.size = 4
        t.addfile(info, io.BytesIO(b'evil'))
    with pytest.raises(ValueError, match='unsafe member'): unpack(tmp_path / 'evil.tar', tmp_path / 'out2')
    assert not (tmp_path / 'escape.txt').exists() and not (tmp_path.parent / 'escape.txt').exists()
    with pytest.raises(ConnectionError, match='by hand and put it in'):
        download('http://127.0.0.1:9/x.tar', tmp_path / 'dl')


def test_prepare_voc(tmp_path, mini):
    vr, sr = mini
    with tarfile.open(tmp_path / VOC_ARCHIVE['name'], 'w') as t: t.add(vr.parent, 'VOCdevkit')
    with tarfile.open(tmp_path / SBD_ARCHIVE['name'], 'w:gz') as t: t.add(sr.parent, 'benchmark_RELEASE')
    specs = tuple(dict(s, size=(tmp_path / s['name']).stat().st_size, md5=file_md5(tmp_path / s['name']))
                  for s in (VOC_ARCHIVE, SBD_ARCHIVE))
    v2, s2 = prepare_voc(tmp_path, tmp_path / 'data', archives=specs)
    assert check_ok(check_voc(v2, s2, official=False))
    with pytest.raises(ValueError, match='corrupt or incomplete'): prepare_voc(tmp_path, tmp_path / 'data2')
