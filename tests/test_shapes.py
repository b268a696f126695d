"""The shapes benchmark is deterministic, and make_shapes never overwrites a folder it did not make."""
import json
import pytest
from zls.splits import SHAPES_COLORS, SHAPES_SHAPES, shapes_classes
from zls.shapes import make_shapes, shapes_params, shapes_variant


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file())


def _snapshot(folder):
    return {f: (folder / f).read_bytes() for f in _files(folder)}


def test_default_dataset_is_byte_identical(tmp_path):
    a, b = make_shapes(tmp_path / 'a'), make_shapes(tmp_path / 'b')
    assert a == tmp_path / 'a' / 'shapes' / 'default' and b.name == 'default'
    files = _files(a)
    assert files == _files(b)
    assert len(files) == 2 * (2000 + 500) + 3  # image + mask per id, train.txt, val.txt, meta.json
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f'{f} differs between two generations'
    assert [p.name for p in (tmp_path / 'a' / 'shapes').iterdir()] == ['default']  # no temporary folder left


def test_variant_folder_and_meta(tmp_path):
    kw = dict(n_train=4, n_val=2, size=32, seed=3)
    p = make_shapes(tmp_path, **kw)
    assert p.parent == tmp_path / 'shapes' and p.name != 'default'
    assert p.name == shapes_variant(shapes_params(**kw)) and p.name.startswith('v-') and len(p.name) == 10
    assert make_shapes(tmp_path, **{**kw, 'seed': 4}).name != p.name
    meta = json.loads((p / 'meta.json').read_text())
    assert meta['params'] == dict(n_train=4, n_val=2, size=32, min_objects=1, max_objects=4,
                                  colors=list(SHAPES_COLORS), shapes=list(SHAPES_SHAPES), seed=3)
    assert meta['classes'] == list(shapes_classes())
    assert meta['counts']['train']['images'] == 4 and meta['counts']['val']['images'] == 2
    assert (p / 'ImageSets/Segmentation/train.txt').read_text().split() == [f'train_{i:05d}' for i in range(4)]
    before = _snapshot(p)
    assert make_shapes(tmp_path, **kw) == p and _snapshot(p) == before  # found again, not rewritten


def test_mismatching_meta_raises_and_is_left_untouched(tmp_path):
    kw = dict(n_train=3, n_val=1, size=32)
    p = make_shapes(tmp_path, **kw)
    meta = json.loads((p / 'meta.json').read_text())
    meta['params']['seed'] = 99  # as if made by other parameters
    (p / 'meta.json').write_text(json.dumps(meta))
    before = _snapshot(p)
    with pytest.raises(FileExistsError, match='left untouched') as e:
        make_shapes(tmp_path, **kw)
    assert str(p) in str(e.value)
    assert _snapshot(p) == before
    # a folder without meta.json, where the default variant would go, is not touched either
    other = tmp_path / 'shapes' / 'default'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='default'):
        make_shapes(tmp_path)
    assert _snapshot(other) == {'notes.txt': b'mine'}
    assert sorted(q.name for q in (tmp_path / 'shapes').iterdir()) == sorted(['default', p.name])


def test_bad_parameters_name_the_parameter(tmp_path):
    for kw, msg in [(dict(size=8), 'size'), (dict(n_train=0), 'n_train'), (dict(min_objects=5), 'min_objects'),
                    (dict(colors=('red', 'pink')), 'colors'), (dict(shapes=('circle', 'circle')), 'shapes')]:
        with pytest.raises(ValueError, match=msg):
            make_shapes(tmp_path, **kw)
    assert not (tmp_path / 'shapes').exists()  # nothing is written before the parameters are valid
