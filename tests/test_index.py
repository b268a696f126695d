"""The newcomer's map: index.ipynb's page tables name every notebook under nbs/, with the module it exports."""
import json, re
from pathlib import Path

NBS = Path(__file__).resolve().parents[1] / 'nbs'


def cells(nb: Path) -> list[str]:
    "The sources of a notebook's cells."
    return [''.join(c['source']) for c in json.loads(nb.read_text())['cells']]


def norm(s: str) -> str:
    "A page name as compared: backticks, case and extra spaces do not count."
    return ' '.join(s.replace('`', '').lower().split())


def title(nb: Path) -> str:
    "A notebook's `# ` title."
    return next(m.group(1) for s in cells(nb) if (m := re.match(r'# (.+)', s)))


def module(nb: Path) -> str | None:
    "The module a notebook exports (its `#| default_exp`), or None for a lesson."
    return next((f'zls.{m.group(1)}' for s in cells(nb) if (m := re.match(r'#\| default_exp (\S+)', s))), None)


def page_table() -> dict[str, str]:
    "index.ipynb's page tables (every table headed `| page | module |`): page -> module cell, names normalised."
    rows, table = [], False
    for line in '\n'.join(cells(NBS / 'index.ipynb')).splitlines():
        if line.startswith('| page | module |'): table = True
        elif not line.startswith('|'): table = False
        elif table and line.startswith('| '): rows.append(line.strip('|').split('|'))
    return {norm(r[0]): r[1].strip().strip('`') for r in rows}


def notebooks() -> list[Path]:
    "Every notebook under nbs/ but index.ipynb, subfolders (nbs/experiments/) included, `_`/`.` folders left out."
    return [nb for nb in sorted(NBS.rglob('*.ipynb'))
            if nb != NBS / 'index.ipynb' and not any(p[0] in '_.' for p in nb.relative_to(NBS).parts)]


def kind(nb: Path) -> str:
    "The module cell a notebook's row must have: its module, `(an experiment)` under nbs/experiments/, else a lesson."
    return module(nb) or ('(an experiment)' if nb.parent.name == 'experiments' else '(a lesson)')


def names(nb: Path) -> set[str]:
    "The names a table may give a page: its title, the title's part before a colon, or its file stem."
    t = norm(title(nb))
    return {t, t.split(':')[0], nb.stem.lower()}


def test_every_notebook_in_the_page_table():
    table = page_table()
    nbs = notebooks()
    assert any(nb.parent.name == 'experiments' for nb in nbs)
    missing = [nb.name for nb in nbs if not names(nb) & table.keys()]
    assert not missing, f'index.ipynb\'s page table leaves out {missing}'
    assert len(table) == len(nbs), f'{len(table)} pages in the table, {len(nbs)} notebooks'


def test_page_table_names_each_module():
    table = page_table()
    for nb in notebooks():
        page = next(iter(names(nb) & table.keys()))
        assert table[page] == kind(nb), f'{nb.name}: table says {table[page]!r}'
