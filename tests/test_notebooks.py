"""The notebooks as lessons: every exported cell holds one idea, short enough to read at a glance (at most 40 lines)."""
import json, re
from pathlib import Path

NBS = Path(__file__).resolve().parent.parent / 'nbs'
MAX_LINES = 40
EXPORT = re.compile(r'^#\|\s*export[is]?\s*$', re.M)  # `#| export`, `#|export` (and nbdev's exporti / exports)


def export_cells(path: Path) -> list[tuple[str, int]]:
    "(cell id, line count) of each exported code cell of the notebook at `path`; a line count includes `#| export`."
    cells = json.loads(path.read_text(encoding='utf-8'))['cells']
    out = []
    for i, c in enumerate(cells):
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        if c['cell_type'] == 'code' and EXPORT.search(src): out.append((c.get('id', f'#{i}'), len(src.splitlines())))
    return out


def test_export_cell_counter(tmp_path):
    cell = dict(cell_type='code', id='abc', source=['#|export\n', 'x = 1\n', 'y = 2'])
    plain = dict(cell_type='code', id='def', source=['z = 3\n'] * 50)
    text = dict(cell_type='markdown', id='ghi', source=['#| export\n'] * 50)
    path = tmp_path / 'counter.ipynb'
    path.write_text(json.dumps(dict(cells=[cell, plain, text])))
    assert export_cells(path) == [('abc', 3)]


def test_export_cells_are_short():
    nbs = sorted(NBS.rglob('*.ipynb'))
    assert nbs, f'no notebooks under {NBS}'
    long = [f'{p.relative_to(NBS)} cell {cid}: {n} lines' for p in nbs for cid, n in export_cells(p) if n > MAX_LINES]
    assert not long, (f'{len(long)} export cell(s) over {MAX_LINES} lines; split each into one idea per cell (a '
                      'function, or a class and its methods with @patch), each followed by a cell that shows it:\n'
                      + '\n'.join(long))
