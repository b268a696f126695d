"""The package's structure: no import cycle (imports inside functions count), and a driver that names no method."""
import ast, re
from pathlib import Path
import pytest
from zls.methods import METHODS

ZLS = Path(__file__).resolve().parent.parent / 'zls'
MODULES = {p.stem: p for p in ZLS.glob('*.py') if p.stem not in ('__init__', '_modidx')}


def imports_of(path: Path) -> set[str]:
    "The zls modules a file imports anywhere, at the top or inside a function, absolutely or relatively."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('zls.')}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: names = [mod] if mod else [a.name for a in node.names]  # from . import x
            elif mod.startswith('zls.'): names = [mod.split('.')[1]]
            elif mod == 'zls': names = [a.name for a in node.names]
            else: names = []
            out |= {n for n in names if n in MODULES}
    return out


def find_cycle(graph: dict) -> list[str] | None:
    "One import cycle of `graph` (module -> imported modules), or None."
    state = {}
    def visit(m, path):
        state[m] = 'open'
        for n in sorted(graph[m]):
            if state.get(n) == 'open': return path[path.index(n):] + [n]
            if n not in state and (c := visit(n, path + [n])): return c
        state[m] = 'done'
        return None
    for m in sorted(graph):
        if m not in state and (c := visit(m, [m])): return c
    return None


def test_cycle_finder_finds_a_cycle_inside_a_function(tmp_path):
    (tmp_path / 'a.py').write_text('from .b import x\n')
    (tmp_path / 'b.py').write_text('def f():\n    from zls.a import y\n')
    global MODULES
    saved, MODULES = MODULES, {'a': tmp_path / 'a.py', 'b': tmp_path / 'b.py'}
    try: assert find_cycle({m: imports_of(p) for m, p in MODULES.items()}) == ['a', 'b', 'a']
    finally: MODULES = saved


def test_no_import_cycle():
    graph = {m: imports_of(p) - {m} for m, p in MODULES.items()}
    assert graph['pipeline'] >= {'methods', 'round'}, 'the parser must see the driver importing its layers'
    assert find_cycle(graph) is None, f'import cycle: {" -> ".join(find_cycle(graph))}'


@pytest.mark.parametrize('module', ['pipeline', 'round', 'train'])
def test_round_and_driver_modules_name_no_method(module):
    "Adding a method is one module and one line in zls.methods: the round and driver code stay as they are."
    text = MODULES[module].read_text()
    names = list(METHODS) + ['STRICT', 'PseudoSeg', 'FS^4', 'SPNet']
    found = [n for n in names if re.search(rf'(?<![\w^]){re.escape(n)}(?![\w^])', text, flags=re.IGNORECASE)]
    assert not found, f'zls/{module}.py names method(s) {found}'


@pytest.mark.parametrize('module', ['train', 'round', 'clustering'])
def test_lower_layers_import_no_method(module):
    "Helpers, training, the round and clustering sit below the methods: they import no method module, nor the driver."
    above = set(METHODS) | {'methods', 'pipeline'}
    assert not imports_of(MODULES[module]) & above, f'zls/{module}.py imports {imports_of(MODULES[module]) & above}'


def test_no_private_names_across_modules():
    "Modules import only public names from each other."
    bad = [(m, a.name) for m, p in MODULES.items() for node in ast.walk(ast.parse(p.read_text()))
           if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('zls'))
           for a in node.names if a.name.startswith('_')]
    assert not bad, bad


def test_notebooks_follow_the_dependency_order():
    "No notebook imports a module that a later notebook defines: the lessons read top to bottom."
    import json
    nbs = sorted((ZLS.parent / 'nbs').glob('[0-9][0-9]_*.ipynb'))
    order = {}
    for nb in nbs:
        src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'])
        if m := re.search(r'^#\| default_exp (\w+)', src, flags=re.M): order[m.group(1)] = nb.name
    late = []
    for nb in nbs:
        src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'])
        dotted = set(re.findall(r'(?:from|import) zls\.(\w+)', src))  # import zls.x, from zls.x import ...
        listed = set(re.findall(r'from zls import ([\w, ]+)', src))  # from zls import x, y
        for mod in dotted | listed:
            for name in (n.strip() for n in mod.split(',')):
                if name in order and order[name] > nb.name: late.append((nb.name, name, order[name]))
    assert not late, f'notebooks importing from later ones: {late}'


def long_url(line: str) -> bool:
    "A line made long by a URL that starts within 120 columns (ruff's E501 exempts these too)."
    i = line.find('http')
    return 0 <= i < 120 and ' ' not in line[i:].rstrip()


def test_package_lines_fit_120_columns():
    "Every line of zls/ reads at 120 columns, except the first line of the `__all__` that nbdev generates, and URLs."
    long = [f'{m}.py:{i}' for m, p in MODULES.items() for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120 and not line.startswith('__all__ = [') and not long_url(line)]
    assert not long, f'lines over 120 columns (edit the notebook, then nbdev_export): {long}'


def test_every_method_keeps_the_method_protocol():
    "Each module of `METHODS` has what the driver reads (`zls.methods.Method`), of the right kinds."
    from zls.methods import Method, method_problems
    for name, mod in METHODS.items():
        assert isinstance(mod, Method), name
        assert method_problems(mod) == [], (name, method_problems(mod))


def test_no_reference_to_a_file_outside_the_repository():
    "Notebooks, configurations, README and package cite papers and their code, and name only files the repo has."
    root = ZLS.parent
    files = [*root.glob('nbs/**/*.ipynb'), *root.glob('pipelines/**/*.*'), root / 'README.md', root / 'RESULTS.md',
             *root.glob('zls/*.py')]
    texts = {p: p.read_text(encoding='utf-8') for p in files if p.is_file()}
    notes = re.compile(r'METHOD\.md|\bseeds/|\bseed 0\d\d\b')  # the developers' notes, which users do not have
    bad = [f'{p.relative_to(root)}: {m.group(0)}' for p, t in texts.items() for m in notes.finditer(t)]
    path = re.compile(r"(?<!Path\(')\b((?:nbs|tests|results|pipelines|zls)/[\w./-]*\w"  # a constructed Path: an example
                      r'\.(?:ipynb|py|csv|yaml|md|json|png))\b')
    bad += [f'{p.relative_to(root)}: {m.group(1)}' for p, t in texts.items() for m in path.finditer(t)
            if not (root / m.group(1)).exists()]
    assert not bad, f'references to files that are not in the repository: {bad}'
