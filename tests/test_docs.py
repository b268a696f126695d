"""The documentation site: built from every notebook plus a tiny run's report, served, checked in headless Chromium."""
import posixpath, tempfile, time
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse
import pytest
from bs4 import BeautifulSoup
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from zls.core import outputs_root
from zls.docs import build_site, doc_pages, serve

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
EXECUTED = {'datasets', 'metrics'}
CHROME_FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
                '--window-size=1280,900')
# every element that loads or links to a URL: links, images, scripts, stylesheets
URLS_JS = ("return Array.from(document.querySelectorAll('[href],[src]'))"
           ".map(e => [e.tagName, e.getAttribute('href') ?? e.getAttribute('src')]);")
IMGS_JS = """return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);"""
CODE_JS = """return Array.from(document.querySelectorAll('.cell_input')).map(e => e.innerText);"""
NAV_JS = ("return Array.from(document.querySelectorAll('.sidebar-tree a.reference'))"
          ".map(a => a.getAttribute('href'));")


@pytest.fixture(scope='module')
def site(tmp_path_factory, strict_run):
    tmp = tmp_path_factory.mktemp('docs')
    t1 = time.time()
    # nbdev_test has executed every notebook already (make test); two pages run again here to check that
    # executed outputs (tables, figures) render, the others are rendered from their stored source
    out = build_site(tmp / 'site', nbs=ROOT / 'nbs', report=strict_run / 'report.ipynb', workers=2,
                     execute=EXECUTED, verbose=True)
    print(f'site {time.time() - t1:.0f} s')
    return out


@pytest.fixture(scope='module')
def browser():
    opts = webdriver.ChromeOptions()
    for f in CHROME_FLAGS: opts.add_argument(f)
    opts.add_argument('--user-data-dir=' + tempfile.mkdtemp(prefix='chromium-'))
    opts.binary_location = '/usr/bin/chromium'
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service('/usr/bin/chromedriver'), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _ids(path: Path, cache={}) -> set:
    if path not in cache:
        soup = BeautifulSoup(path.read_text(encoding='utf-8'), 'html.parser')
        ids = {e['id'] for e in soup.find_all(id=True)}
        names = {e['name'] for e in soup.find_all('a', attrs={'name': True})}
        cache[path] = ids | names
    return cache[path]


@pytest.fixture(scope='module')
def pages(site, browser):
    "Load every HTML page of the served site once; keep what the checks need."
    got = {}
    with serve(site) as url:
        for path in sorted(site.rglob('*.html')):
            rel = path.relative_to(site).as_posix()
            browser.get(url + rel)
            browser.execute_script('return document.readyState')  # get() waits for the load event
            imgs = browser.execute_script(IMGS_JS)
            got[rel] = dict(path=path, url=url + rel, urls=browser.execute_script(URLS_JS), imgs=imgs,
                            nav=browser.execute_script(NAV_JS), code=browser.execute_script(CODE_JS),
                            text=browser.execute_script('return document.body.innerText'),
                            log=browser.get_log('browser'))
            if rel == 'index.html':
                shot = outputs_root() / 'docs-home.png'
                shot.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(shot))
        base = url
    return dict(base=base, pages=got)


def test_every_page_has_no_broken_internal_link(site, pages):
    base, broken = pages['base'], []
    for rel, p in pages['pages'].items():
        for tag, ref in p['urls']:
            if not ref or ref.startswith(('javascript:', 'mailto:', 'data:')): continue
            full = urljoin(p['url'], ref)
            if not full.startswith(base): continue  # an external link (GitHub, sphinx-doc.org, ...)
            target, frag = urldefrag(full)
            path = urlparse(target).path[len(urlparse(base).path):]
            f = site / path
            if f.is_dir() or path == '': f = f / 'index.html'
            if not f.is_file():
                broken.append(f'{rel}: <{tag}> {ref} -> missing {path}')
                continue
            if frag and f.suffix == '.html' and frag not in _ids(f):
                broken.append(f'{rel}: <{tag}> {ref} -> no id {frag!r}')
    assert not broken, '\n'.join(broken[:50])


def test_every_image_loads(pages):
    bad = [f'{rel}: {src} (complete={c}, naturalWidth={w})'
           for rel, p in pages['pages'].items() for src, c, w in p['imgs'] if not (c and w > 0)]
    assert not bad, '\n'.join(bad)
    errors = [f'{rel}: {e["message"]}' for rel, p in pages['pages'].items() for e in p['log']
              if e['level'] == 'SEVERE' and 'favicon.ico' not in e['message']]
    assert not errors, '\n'.join(errors)  # e.g. a stylesheet or script that failed to load


def test_every_notebook_is_a_page_in_the_navigation(pages):
    want = [f'{n}.html' for _, n in doc_pages(ROOT / 'nbs') if n != 'index'] + ['run_report.html']
    assert len(want) >= 17
    for rel, p in pages['pages'].items():
        if rel in ('genindex.html', 'search.html'): continue
        nav = {posixpath.normpath(posixpath.join(posixpath.dirname(rel), h)) for h in p['nav']}  # experiments/ too
        missing = [w for w in want if w not in nav and w != rel]  # furo links the current page too
        assert not missing, f'{rel}: navigation lacks {missing}'
    assert set(want) <= set(pages['pages']), set(want) - set(pages['pages'])


def test_directives_and_exported_code_do_not_show(pages):
    n_code = 0
    for rel, p in pages['pages'].items():
        n_code += len(p['code'])
        for code in p['code']:
            bad = [l for l in code.splitlines() if l.lstrip().startswith('#|')]
            assert not bad, f'{rel} shows directive lines {bad}'
    assert n_code > 100, n_code
    core = '\n'.join(pages['pages']['core.html']['code'])
    assert 'def project_root' not in core and 'IGNORE_INDEX = 255' not in core, \
        'exported cells give way to their API docs'
    assert 'seed_everything(0)' in core  # the cells that show and test stay


def test_executed_pages_show_their_figures(pages):
    for name in EXECUTED:
        figs = [w for s, c, w in pages['pages'][f'{name}.html']['imgs'] if '_images/' in (s or '')]
        assert figs and all(w > 50 for w in figs), (name, figs)


def test_report_page_shows_its_figures(pages, strict_run):
    p = pages['pages']['run_report.html']
    assert f'Run report: {strict_run.name}' in p['text']
    figs = [(s, w) for s, c, w in p['imgs'] if '_images/' in (s or '')]
    assert len(figs) >= 3, figs  # rounds, pseudo-label quality, examples
    assert all(w > 100 for _, w in figs)
    assert 'unseen' in p['text']  # the results table


def test_api_docs_of_a_known_function(site, pages):
    p = pages['pages']['metrics.html']
    assert 'confusion_matrix' in _ids(site / 'metrics.html')
    assert 'def confusion_matrix(' in p['text'] and 'LongTensor of pixel counts' in p['text']
    # a backticked name elsewhere links to it, inside the site
    links = [ref for q in pages['pages'].values() for _, ref in q['urls'] if ref and 'metrics.html#' in ref]
    assert links and not any(ref.startswith('http') for ref in links), links[:5]
    assert (outputs_root() / 'docs-home.png').stat().st_size > 10_000
