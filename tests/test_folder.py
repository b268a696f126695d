"""Your own data: `zls data check folder` names every problem of a folder once, with its count; a folder runs."""
import json, re, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from zls.core import load_mask, save_mask
from zls.folder import make_mini_folder
from conftest import cli

ZLS = str(Path(sys.executable).parent / 'zls')
UNSEEN = 'blue square'  # of the miniature's background, red circle, red square, blue circle, blue square


@pytest.fixture(scope='module')
def clean(tmp_path_factory) -> Path:
    "A clean miniature folder (20 scenes, a seeded split of 16 + 4), never changed: tests damage copies."
    return make_mini_folder(tmp_path_factory.mktemp('clean') / 'mini', n=20)


@pytest.fixture
def tree(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / 'mini'))


def problems(out: str) -> dict[str, tuple[int, str]]:
    "The problems of a check's report: item -> (count, its fix), each row and each fix read once."
    fixes = dict(re.findall(r'^\((\d+)\) (.*)$', out, flags=re.M))
    row = r' *(.+?) +(?:0|a name per line|folder|both lists, or neither) +(.+?) +NO +\((\d+)\) *'  # the expected
    rows = [m.groups() for l in out.splitlines() if (m := re.fullmatch(row, l))]
    assert len(rows) == len({r[0] for r in rows}), f'a problem named twice:\n{out}'
    return {item: (int(found) if found.isdigit() else found, fixes[k]) for item, found, k in rows}


def replace_line(path: Path, old: str, new: str):
    path.write_text(''.join(f'{new if l == old else l}\n' for l in path.read_text().splitlines()))


def add_line(path: Path, line: str): path.write_text(path.read_text() + f'{line}\n')


def damage_mask(root: Path, name: str, fn):
    p = root / 'masks' / f'{name}.png'
    save_mask(p, fn(load_mask(p)))


# each defect: what it does to a clean tree, the row that must name it, and its count
DEFECTS = {
    'missing mask': (lambda r: [(r / 'masks' / f'scene_{i:04d}.png').unlink() for i in (3, 7)],
                     'images without a mask', 2),
    'extra mask': (lambda r: shutil.copy(r / 'masks' / 'scene_0000.png', r / 'masks' / 'orphan.png'),
                   'masks without an image', 1),
    'size mismatch': (lambda r: damage_mask(r, 'scene_0002', lambda m: m[:16, :20]), 'mask and image sizes differ', 1),
    'ids not in classes.txt': (lambda r: damage_mask(r, 'scene_0004', lambda m: np.where(m == 0, 9, m)),
                               'mask ids not in classes.txt', 1),
    'RGB off the palette': (lambda r: Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(
                            r / 'masks' / 'scene_0005.png'), "RGB masks off VOC's palette", 1),
    'class without pixels': (lambda r: add_line(r / 'classes.txt', 'green cross'), 'classes without train pixels', 1),
    'name without embedding': (lambda r: replace_line(r / 'classes.txt', 'red square', 'zorblax'),
                               'class names unknown to glove', 1),
    'unreadable mask': (lambda r: (r / 'masks' / 'scene_0006.png').write_bytes(b'\x89PNG\r\n\x1a\n broken'),
                        'unreadable files', 1),
    'mask of another mode': (lambda r: Image.new('LA', (32, 32)).save(r / 'masks' / 'scene_0008.png'),
                             'masks of another mode', 1),
    'two images for one id': (lambda r: shutil.copy(r / 'images' / 'scene_0009.jpg', r / 'images' / 'scene_0009.png'),
                              'ids with several images', 1),
}


def test_clean_folder_is_complete(clean):
    code, out, err = cli('data', 'check', 'folder', '--root', clean)
    assert code == 0, out + err
    assert out.rstrip().endswith('folder: complete')
    assert '16 train, 4 val: seeded split (data_seed=0)' in out


@pytest.mark.parametrize('defect', DEFECTS)
def test_each_defect_is_named_once_with_its_count(tree, defect):
    damage, item, n = DEFECTS[defect]
    damage(tree)
    code, out, _ = cli('data', 'check', 'folder', '--root', tree)
    assert code == 1, out
    found = problems(out)
    assert item in found, f'{item!r} not named:\n{out}'
    assert found[item][0] == n and found[item][1].startswith(f'{n} '), found[item]


def test_defect_details(tree):
    "The fixes name the files, ids, colours and sources that they are about."
    for d in ('missing mask', 'ids not in classes.txt', 'RGB off the palette', 'class without pixels',
              'name without embedding', 'size mismatch'):
        DEFECTS[d][0](tree)
    found = problems(cli('data', 'check', 'folder', '--root', tree)[1])
    assert 'images/scene_0003.jpg, images/scene_0007.jpg' in found['images without a mask'][1]
    assert '([9])' in found['mask ids not in classes.txt'][1] and 'masks/scene_0004.png' in found['mask ids not in '
                                                                                                  'classes.txt'][1]
    assert 'masks/scene_0005.png (1024 pixels)' in found["RGB masks off VOC's palette"][1]
    assert "'green cross'" in found['classes without train pixels'][1]
    assert "'green cross'" in found['classes without val pixels'][1]  # in neither set: both rows
    assert "'zorblax' (known to: minilm)" in found['class names unknown to glove'][1]
    assert 'masks/scene_0002.png 20x16 vs images/scene_0002.jpg 32x32' in found['mask and image sizes differ'][1]
    # the check reads the run's source: MiniLM reads 'zorblax' in word pieces
    assert 'class names unknown to minilm' not in problems(cli('data', 'check', 'folder', '--root', tree,
                                                               '--embeddings', 'minilm')[1])


def test_every_defect_at_once_is_named(tree):
    "The check does not stop at the first problem: all of them come out of one run."
    for damage, *_ in DEFECTS.values(): damage(tree)
    code, out, _ = cli('data', 'check', 'folder', '--root', tree)
    assert code == 1
    found = problems(out)
    assert {item for _, item, _ in DEFECTS.values()} <= set(found), out
    assert out.rstrip().endswith(f'folder: {len(found)} problem(s); the numbered fixes say what to do')


def test_list_defects(tree):
    "train.txt and val.txt: both or neither; listed ids have images; no id in both."
    (tree / 'train.txt').write_text('scene_0000\nscene_0001\nnot_an_image\n')
    found = problems(cli('data', 'check', 'folder', '--root', tree)[1])
    assert found['train and val ids'][1].endswith('write both lists (image ids, one per line) or neither (a seeded '
                                                  'split)'), found
    (tree / 'val.txt').write_text('scene_0001\nscene_0002\n')
    found = problems(cli('data', 'check', 'folder', '--root', tree)[1])
    assert found['listed ids without an image'] == (1, '1 listed id(s) have no image, e.g. train.txt: not_an_image: '
                                                       'list image file names without their extension')
    assert found['ids in both train and val'][0] == 1 and 'scene_0001' in found['ids in both train and val'][1]


def test_check_without_root_or_on_nothing(tmp_path):
    code, _, err = cli('data', 'check', 'folder')
    assert code == 2 and 'give its path' in err
    code, out, _ = cli('data', 'check', 'folder', '--root', tmp_path / 'none')
    found = problems(out)
    assert code == 1 and {'classes.txt', 'images/', 'masks/'} <= set(found)


@pytest.mark.parametrize('setting, names', [
    ((), "unseen='' is invalid: dataset folder has no default unseen classes"),
    (('unseen=blue sqare',), "did you mean 'blue square'"),
    (('unseen=blue square', 'split=voc'), 'set split=folder'),
    (('unseen=blue square', 'data_root='), "data_root='' is invalid"),
])
def test_bad_folder_runs_are_refused_before_anything_is_written(clean, tmp_path, setting, names):
    sets = [a for kv in (f'data_root={clean}', 'dataset=folder', *setting) for a in ('--set', kv)]
    code, _, err = cli('run', '--out', tmp_path / 'out', '--no-report', *sets)
    assert code == 2 and names in err, err
    assert not (tmp_path / 'out').exists()


def test_both_background_modes_are_accepted(clean, tmp_path):
    from zls.methods import run_config
    from zls.data import build_datasets, split_of
    for mode, n in (('ignore', 4), ('seen', 5)):
        cfg = run_config(dict(dataset='folder', data_root=str(clean), unseen=UNSEEN, background=mode))
        assert split_of(cfg.data).n_classes == n and cfg.data.split == 'folder'
    train, val = build_datasets(cfg.data)
    assert (len(train), len(val)) == (16, 4) and set(val[0]['label'].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    nobg = Path(shutil.copytree(clean, tmp_path / 'nobg'))
    replace_line(nobg / 'classes.txt', 'background', 'floor')
    with pytest.raises(ValueError, match="needs a class named 'background'"):
        run_config(dict(dataset='folder', data_root=str(nobg), unseen=UNSEEN, background='seen'))


@pytest.mark.slow
@pytest.mark.parametrize('background', ['ignore', 'seen'])
def test_folder_runs_rounds_0_and_1(tmp_path, background):
    "`zls run` on a folder of 40 scenes, as a user types it: round 0 and one round of self-training."
    root = make_mini_folder(tmp_path / 'mine', n=40)
    tiny = dict(dataset='folder', data_root=root, unseen=UNSEEN, background=background, iters0=20, iters=10,
                batch_size=8, eval_batch=8, threads=1, crop=32, log_every=10, ckpt_every=10)
    sets = [a for k, v in tiny.items() for a in ('--set', f'{k}={v}')]
    res = subprocess.run([ZLS, 'run', '--name', 'mine', '--out', tmp_path / 'out', '--rounds', '1', '--no-report',
                          *sets], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    run = tmp_path / 'out' / 'mine'
    assert json.loads((run / 'run.json').read_text())['params']['split'] == 'folder'
    for k in (0, 1):
        m = json.loads((run / f'round_{k}' / 'metrics.json').read_text())['plain']
        assert 0 <= m['mIoU_unseen'] <= 100 and 0 <= m['hIoU'] <= 100
    assert any((run / 'round_1' / 'pseudo').glob('*.png'))
    assert 'seeded split (data_seed=0): 32 train and 8 val images' in (run / 'round_0.ipynb').read_text()
