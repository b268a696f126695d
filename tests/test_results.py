"""The README's result tables are generated from the committed CSVs under results/, and agree with them."""
import re, subprocess, sys
from pathlib import Path
import pandas as pd
from zls.benchmark import README_TABLES, update_readme

ROOT = Path(__file__).resolve().parent.parent
ZLS = str(Path(sys.executable).parent / 'zls')


def test_every_generated_table_agrees_with_its_csv():
    res = subprocess.run([ZLS, 'results', '--check'], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_known_table_is_in_the_readme_next_to_its_command():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    names = re.findall(r'<!-- table: ([\w-]+) -->', text)
    assert sorted(names) == sorted(README_TABLES)
    for name, (csv, _) in README_TABLES.items():
        assert (ROOT / 'results' / csv).is_file()
        assert f'results/{csv}' in text, f'the README must name the command that writes results/{csv}'


def test_a_changed_csv_makes_the_check_fail(tmp_path):
    (tmp_path / 'results').mkdir()
    for csv in {c for c, _ in README_TABLES.values()}:
        (tmp_path / 'results' / csv).write_bytes((ROOT / 'results' / csv).read_bytes())
    readme = tmp_path / 'README.md'
    readme.write_bytes((ROOT / 'README.md').read_bytes())
    assert update_readme(readme, tmp_path / 'results', check=True) == []
    rows = pd.read_csv(tmp_path / 'results' / 'semi_supervised.csv')
    rows.loc[0, 'mIoU'] += 1.0
    rows.to_csv(tmp_path / 'results' / 'semi_supervised.csv', index=False)
    assert update_readme(readme, tmp_path / 'results', check=True) == ['semi-supervised']
