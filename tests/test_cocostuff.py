"""COCO-stuff format: the loader, the check report on empty/partial/complete trees, the id mapping, archives."""
import zipfile
import numpy as np
import pytest
import torch
from PIL import Image
from zls.core import IGNORE_INDEX
from zls.splits import COCOSTUFF_ALL, COCOSTUFF_IDS, COCOSTUFF_UNSEEN, get_split
from zls.datasets import file_md5
from zls.cocostuff import (COCOSTUFF_ARCHIVES, LABEL_ARCHIVE, CocoStuff, check_cocostuff, cocostuff_root,
                           make_mini_cocostuff, prepare_cocostuff)


@pytest.fixture
def mini(tmp_path):
    return make_mini_cocostuff(tmp_path)


def _rows(rep):
    return rep.set_index('item')


def test_mini_tree_is_official_layout(mini):
    files = sorted(p.relative_to(mini).as_posix() for p in mini.rglob('*') if p.is_file())
    assert files == ['images/train2017/000000000009.jpg', 'images/train2017/000000000016.jpg',
                     'images/train2017/000000000023.jpg', 'images/train2017/000000000030.jpg',
                     'images/val2017/000000000139.jpg', 'images/val2017/000000000146.jpg',
                     'stuffthingmaps_trainval2017/train2017/000000000009.png',
                     'stuffthingmaps_trainval2017/train2017/000000000016.png',
                     'stuffthingmaps_trainval2017/train2017/000000000023.png',
                     'stuffthingmaps_trainval2017/train2017/000000000030.png',
                     'stuffthingmaps_trainval2017/val2017/000000000139.png',
                     'stuffthingmaps_trainval2017/val2017/000000000146.png']
    for f in files:
        with Image.open(mini / f) as im:
            assert im.format == ('JPEG' if f.endswith('.jpg') else 'PNG')
            if f.endswith('.png'): assert im.mode == 'L'
    a = make_mini_cocostuff(mini.parent / 'again')
    assert all((a / f).read_bytes() == (mini / f).read_bytes() for f in files)  # deterministic


def test_loader_items(mini):
    train, val = CocoStuff(mini), CocoStuff(mini, 'val2017')
    assert (len(train), len(val)) == (4, 2) and train.names[0] == '000000000009'
    for ds in (train, val):
        for it in ds:
            assert it['image'].dtype == torch.uint8 and it['image'].shape[0] == 3
            assert it['label'].dtype == torch.uint8 and it['label'].shape == it['image'].shape[1:]
            ids = set(it['label'].unique().tolist())
            assert ids <= set(range(182)) | {IGNORE_INDEX}
    item = train[0]
    with Image.open(mini / 'stuffthingmaps_trainval2017/train2017/000000000009.png') as im:
        assert np.array_equal(item['label'].numpy(), np.asarray(im))
    assert COCOSTUFF_ALL.index('street sign') in item['label'].unique().tolist()


def test_greyscale_jpeg_becomes_rgb(mini):
    with Image.open(mini / 'images/train2017/000000000016.jpg') as im:
        assert im.mode == 'L'
        grey = np.asarray(im)
    img = CocoStuff(mini)[1]['image']
    assert img.shape == (3, *grey.shape)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert np.abs(img[0].numpy().astype(int) - grey.astype(int)).max() <= 1


def test_root_from_zls_data(mini, monkeypatch):
    monkeypatch.setenv('ZLS_DATA', str(mini.parent))
    assert cocostuff_root() == mini and CocoStuff(image_set='val2017').names == ['000000000139', '000000000146']


def test_loader_errors(mini, tmp_path):
    with pytest.raises(ValueError, match="image_set must be one of"):
        CocoStuff(mini, 'val')
    with pytest.raises(FileNotFoundError,
                       match='get train2017.zip \\(19,336,861,798 bytes, md5 cced6f7f71b7629ddf16f17bbcfab6b2\\)'):
        CocoStuff(tmp_path / 'nowhere')
    (mini / 'stuffthingmaps_trainval2017/val2017/000000000146.png').unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"1 of 2 images .* \(ids \['000000000146'\]\): get stuffthingmaps_trainval2017.zip"):
        CocoStuff(mini, 'val2017')


def test_check_complete(mini):
    rep = check_cocostuff(mini, official=False)
    assert list(rep.columns) == ['item', 'expected', 'found', 'ok', 'fix']
    assert rep.ok.all() and (rep.fix == '').all() and len(rep) == 15
    off = check_cocostuff(mini)  # the official counts are not met by a miniature
    assert off[~off.ok].item.tolist() == ['images/train2017/*.jpg', 'stuffthingmaps_trainval2017/train2017/*.png',
                                          'images/val2017/*.jpg', 'stuffthingmaps_trainval2017/val2017/*.png']
    assert _rows(off).loc['images/train2017/*.jpg', 'expected'] == '118287'


def test_check_empty(tmp_path):
    rep = check_cocostuff(tmp_path / 'none', official=False)
    r = _rows(rep)
    assert not r.loc['root folder', 'ok'] and r.loc['images/train2017/', 'found'] == 'missing'
    assert 'get val2017.zip (815,585,330 bytes, md5 442b8da7639aecaf257c1dceb8ba8c80)' in \
        r.loc['images/val2017/', 'fix']
    assert 'stuffthingmaps_trainval2017.zip (about 659 MB' in r.loc['stuffthingmaps_trainval2017/train2017/', 'fix']
    assert r.loc['train2017: one sample decodes', 'found'] == 'no image with its label map'
    (tmp_path / 'none').mkdir()
    assert _rows(check_cocostuff(tmp_path / 'none', official=False)).loc['root folder', 'ok']


def test_check_partial(mini):
    (mini / 'images/train2017/000000000030.jpg').unlink()
    (mini / 'stuffthingmaps_trainval2017/val2017/000000000139.png').unlink()
    r = _rows(check_cocostuff(mini, official=False))
    assert r.loc['train2017: label maps without image', 'found'] == '1'
    assert "ids ['000000000030']" in r.loc['train2017: label maps without image', 'fix']
    assert 'get train2017.zip' in r.loc['train2017: label maps without image', 'fix']
    assert r.loc['val2017: images without label map', 'found'] == '1'
    assert "ids ['000000000139']" in r.loc['val2017: images without label map', 'fix']
    assert r.loc['val2017: one sample decodes', 'ok']  # 146 still pairs
    assert r[~r.ok].index.tolist() == ['train2017: label maps without image', 'val2017: images without label map']


def test_check_bad_label_values_and_sizes(mini):
    labels = mini / 'stuffthingmaps_trainval2017'
    Image.fromarray(np.full((40, 56), 190, np.uint8), mode='L').save(labels / 'train2017/000000000009.png')
    Image.fromarray(np.zeros((10, 10), np.uint8), mode='L').save(labels / 'val2017/000000000139.png')
    r = _rows(check_cocostuff(mini, official=False))
    assert 'bad ids [190]' in r.loc['train2017: one sample decodes', 'found']
    assert not r.loc['train2017: one sample decodes', 'ok']
    assert r.loc['val2017: one sample decodes', 'found'] == '000000000139: 56x40, label 10x10, 1 ids'
    assert not r.loc['val2017: one sample decodes', 'ok']


def test_id_mapping(mini):
    split = get_split('cocostuff')
    ids = np.arange(256, dtype=np.uint8)
    ev, tr = split.encode(ids, train=False), split.encode(ids, train=True)
    assert ev[list(COCOSTUFF_IDS)].tolist() == list(range(171))
    unused = sorted(set(range(182)) - set(COCOSTUFF_IDS))
    assert len(unused) == 11 and 11 in unused
    assert (ev[unused] == IGNORE_INDEX).all() and (tr[unused] == IGNORE_INDEX).all()
    unseen = [COCOSTUFF_ALL.index(c) for c in COCOSTUFF_UNSEEN]
    assert (tr[unseen] == IGNORE_INDEX).all()
    assert ev[unseen].tolist() == [split.names.index(c) for c in COCOSTUFF_UNSEEN]
    assert ev[IGNORE_INDEX] == IGNORE_INDEX and (ev[182:] == IGNORE_INDEX).all()
    lab = CocoStuff(mini)[0]['label']
    gi = lab == COCOSTUFF_ALL.index('giraffe')
    assert gi.any() and (split.encode(lab, train=True)[gi] == IGNORE_INDEX).all()
    assert (split.encode(lab, train=False)[gi] == split.names.index('giraffe')).all()
    labels = [it['label'].flatten() for s in ('train2017', 'val2017') for it in CocoStuff(mini, s)]
    present = set(torch.cat(labels).tolist())
    assert len(present & set(unseen)) >= 5 and {11, IGNORE_INDEX} <= present


def _zip_mini(mini, out):
    out.mkdir()
    for name, base, members in (('train2017.zip', mini / 'images', ['train2017']),
                                ('val2017.zip', mini / 'images', ['val2017']),
                                (LABEL_ARCHIVE, mini / 'stuffthingmaps_trainval2017', ['train2017', 'val2017'])):
        with zipfile.ZipFile(out / name, 'w') as z:
            for m in members:
                for f in sorted((base / m).iterdir()): z.write(f, f'{m}/{f.name}')
    return {n: {**a, 'size': (out / n).stat().st_size, 'md5': file_md5(out / n)} for n, a in COCOSTUFF_ARCHIVES.items()}


def test_prepare(mini, tmp_path):
    own = _zip_mini(mini, tmp_path / 'arcs')
    with pytest.raises(ValueError, match='expected 19,336,861,798'):
        prepare_cocostuff(tmp_path / 'arcs', tmp_path / 'd1')  # the official checksums refuse the miniature
    rep = prepare_cocostuff(tmp_path / 'arcs', tmp_path / 'd2', archives=own, official=False)
    assert rep.ok.all()
    out = tmp_path / 'd2' / 'cocostuff'
    for f in mini.rglob('*'):
        if f.is_file(): assert (out / f.relative_to(mini)).read_bytes() == f.read_bytes()
    assert not [p for p in out.rglob('.*')]  # no temporary unpack folders left
    (tmp_path / 'arcs' / 'val2017.zip').unlink()
    # only checks
    assert prepare_cocostuff(tmp_path / 'arcs', tmp_path / 'd2', archives=own, official=False).equals(rep)
    with pytest.raises(FileNotFoundError, match='val2017.zip not found: get val2017.zip'):
        prepare_cocostuff(tmp_path / 'arcs', tmp_path / 'd3', archives=own, official=False)
    with pytest.raises(ValueError, match='found 4'):
        prepare_cocostuff(tmp_path / 'arcs', tmp_path / 'd2', archives=own)  # official counts
