"""RESULTS.md's tables (and the README's) are generated from the committed CSVs under results/, and agree with them."""
import re, subprocess, sys
from pathlib import Path
import pandas as pd
from zls.tables import RESULT_TABLES, update_tables

ROOT = Path(__file__).resolve().parent.parent
ZLS = str(Path(sys.executable).parent / 'zls')
LINK = re.compile(r'\]\(([^)#\s]+)(?:#[^)]*)?\)')


def test_every_generated_table_agrees_with_its_csv():
    res = subprocess.run([ZLS, 'results', '--check'], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'RESULTS.md: tables agree' in res.stdout and 'README.md: tables agree' in res.stdout, res.stdout


def test_every_known_table_is_in_the_results_page_next_to_its_command():
    text = (ROOT / 'RESULTS.md').read_text(encoding='utf-8')
    names = re.findall(r'<!-- table: ([\w-]+) -->', text)
    assert sorted(names) == sorted(RESULT_TABLES)
    for name, (csv, _) in RESULT_TABLES.items():
        assert (ROOT / 'results' / csv).is_file()
        assert f'results/{csv}' in text, f'RESULTS.md must name the command that writes results/{csv}'


def test_the_readme_is_a_short_signpost_whose_links_resolve():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert len(readme.splitlines()) <= 150
    assert set(re.findall(r'<!-- table: ([\w-]+) -->', readme)) <= set(RESULT_TABLES)
    for name in ('README.md', 'RESULTS.md'):
        text = (ROOT / name).read_text(encoding='utf-8')
        local = [t for t in LINK.findall(text) if not re.match(r'[a-z]+:', t)]
        assert [t for t in local if not (ROOT / t).exists()] == [], name
    assert '](RESULTS.md)' in readme


def test_a_changed_csv_makes_the_check_fail(tmp_path):
    (tmp_path / 'results').mkdir()
    for csv in {c for c, _ in RESULT_TABLES.values()}:
        (tmp_path / 'results' / csv).write_bytes((ROOT / 'results' / csv).read_bytes())
    page = tmp_path / 'RESULTS.md'
    page.write_bytes((ROOT / 'RESULTS.md').read_bytes())
    assert update_tables(page, tmp_path / 'results', check=True) == []
    rows = pd.read_csv(tmp_path / 'results' / 'semi_supervised.csv')
    rows.loc[0, 'mIoU'] += 1.0
    rows.to_csv(tmp_path / 'results' / 'semi_supervised.csv', index=False)
    assert update_tables(page, tmp_path / 'results', check=True) == ['semi-supervised']
