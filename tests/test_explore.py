"""The run explorer (zls.explore): widget checks on tiny runs, and end to end in JupyterLab with headless Chromium."""
import contextlib, io, json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import nbformat
import numpy as np
import psutil
import pytest
from zls.core import IGNORE_INDEX, load_mask, outputs_root, project_root
from zls.explore import Explorer
from zls.labeler import View
from zls.pipeline import evaluate_round, label_round, prepare_round, train_round

pytestmark = pytest.mark.slow  # trains tiny runs

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = dict(n_train=48, n_val=16, iters0=30, iters=10, batch_size=8, eval_batch=16, log_every=10, ckpt_every=10)
CHROMIUM, CHROMEDRIVER = Path('/usr/bin/chromium'), Path('/usr/bin/chromedriver')
CHROME_FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
                '--window-size=1500,1250')


def make_run(run: Path, rounds: int = 1, **params) -> Path:
    "A tiny STRICT run in-process (seconds), as nbs/10_pipeline makes it."
    p = dict(TINY, **params)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for k in range(rounds + 1):
            r = prepare_round(p, run_dir=run, k=k)
            label_round(r)
            train_round(r)
            evaluate_round(r)
    return run


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('explore')
    return make_run(tmp / 'run', data_root=str(tmp / 'data'))


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist.*run.json.*train.pt'): Explorer(tmp_path / 'nope')
    (tmp_path / 'round_0').mkdir()
    (tmp_path / 'round_0' / 'metrics.json').write_text('{}')
    not_a_run = re.escape(f'{tmp_path} is not a zls run folder') + '.*train.pt'
    with pytest.raises(FileNotFoundError, match=not_a_run): Explorer(tmp_path)


def test_a_run_of_another_method_opens(tmp_path):
    "A PseudoSeg run (no STRICT labeler in its configuration) opens: predictions and IoU, no saved pseudo-labels."
    run = make_run(tmp_path / 'ps', rounds=0, data_root=str(tmp_path / 'data'), method='pseudoseg', background='seen',
                   label_fraction=0.25, ps_eval_images=0)
    ex = Explorer(run, device='cpu')
    assert ex.rounds == [0] and ex.maps['prediction'] is not None and ex.iou is not None
    assert ex.maps['pseudo'] is None and 'background' in ex.split.names


def test_round_0_only_and_missing_generator(tiny_run, tmp_path):
    "A run stopped after round 0 opens with notes; a round whose generator was deleted says so."
    only0 = tmp_path / 'only0'
    shutil.copytree(tiny_run / 'round_0', only0 / 'round_0')
    ex = Explorer(only0, device='cpu')
    assert ex.rounds == [0] and ex.k == 0
    assert ex.maps['pseudo'] is None and ex.maps['live'] is None and ex.quality is None
    assert 'round 0' in ex.notes['pseudo'] and ex.iou is not None and ex.w_images['pseudo'].layout.display == 'none'
    no_gen = tmp_path / 'no_gen'
    shutil.copytree(tiny_run, no_gen)
    (no_gen / 'round_0' / 'train.pt').unlink()
    ex = Explorer(no_gen, device='cpu')
    assert ex.rounds == [1] and ex.maps['live'] is None and 'round_0/train.pt' in ex.notes['live']
    assert ex.maps['pseudo'] is not None and len(ex.figure().axes) == 6


def test_controls_recompute(tiny_run):
    "Every control changes what is shown; the live labels come back to the saved ones."
    ex = Explorer(tiny_run, device='cpu', index=2)
    saved = load_mask(tiny_run / 'round_1' / 'pseudo' / f"{ex.item()['name']}.png")
    assert (ex.maps['live'] == saved).all()
    png = ex.w_images['live'].value
    ex.w_top_p.value = 10
    assert ex.w_images['live'].value != png and (ex.maps['live'] != IGNORE_INDEX).sum() < (saved != IGNORE_INDEX).sum()
    ex.w_top_p.value = 100
    assert (ex.maps['live'] == saved).all() and ex.w_images['live'].value == png
    before = ex.maps['truth']
    ex.w_index.value = 3
    assert ex.w_name.value == ex.datasets['train'].names[3] and not np.array_equal(before, ex.maps['truth'])
    ex.w_set.value = 'val'
    ex.w_index.value = 15
    ex.w_set.value = 'train'
    assert ex.index == 15 and ex.maps['pseudo'] is not None
    ex.w_set.value = 'val'
    assert ex.index == 15  # both sets have more than 15 images: the index stays
    with pytest.raises(ValueError, match='index must be in 0..15'): ex.show(index=16)
    with pytest.raises(ValueError, match="image_set must be 'train' or 'val'"): ex.show(image_set='test')


def test_other_views_top_p_and_seen_background(tmp_path):
    "A run with its own views, top-p and seen background: the explorer starts from its settings, reproduces its labels."
    run = make_run(tmp_path / 'seen', data_root=str(tmp_path / 'data'), background='seen', views='1,1f,2', top_p=60.0)
    ex = Explorer(run, device='cpu')
    assert ex.top_p == 60.0 and ex.views == (View(), View(1.0, True), View(2.0)) and View(2.0) in ex.w_views
    assert 'background' in ex.split.names
    for i in range(4):
        ex.w_index.value = i
        assert (ex.maps['live'] == ex.maps['pseudo']).all(), f'image {i}: live pseudo-labels differ from the saved ones'
        on_background = ex.maps['live'][ex.maps['truth'] == ex.split.bg_idx]
        assert (on_background == IGNORE_INDEX).mean() > 0.5  # background mostly wins its pixels
    ex.show(views='identity')
    assert ex.views == (View(),) and ex.w_views[View(2.0)].value is False


# ---------------------------------------------------------------- JupyterLab, end to end

NOTEBOOK_CELLS = [
    "%%capture\n# a tiny run, in-process (seconds)\nfrom pathlib import Path\n"
    "from zls.pipeline import prepare_round, label_round, train_round, evaluate_round\n"
    f"tiny = dict({', '.join(f'{k}={v!r}' for k, v in TINY.items())}, data_root=str(Path('data').resolve()))\n"
    "for k in (0, 1):\n"
    "    r = prepare_round(tiny, run_dir='run', k=k); label_round(r); train_round(r); evaluate_round(r)",
    "from zls.explore import Explorer\nex = Explorer('run')\nex.widget",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _get(url: str, token: str, method: str = 'GET') -> int:
    req = urllib.request.Request(url, method=method, headers={'Authorization': f'token {token}'})
    with urllib.request.urlopen(req, timeout=5) as r: return r.status


def _jupyter_env(tmp: Path) -> dict:
    "Jupyter, JupyterLab and IPython config, data, runtime, settings, workspaces in `tmp`: the user's are not touched."
    env = {k: v for k, v in os.environ.items() if not k.startswith(('JUPYTER', 'IPYTHON'))}
    dirs = dict(JUPYTER_CONFIG_DIR='config', JUPYTER_DATA_DIR='data', JUPYTER_RUNTIME_DIR='runtime',
                IPYTHONDIR='ipython', JUPYTERLAB_SETTINGS_DIR='lab-settings',
                JUPYTERLAB_WORKSPACES_DIR='lab-workspaces')
    for k, d in dirs.items():
        (tmp / d).mkdir(parents=True, exist_ok=True)
        env[k] = str(tmp / d)
    # no news or update pop-ups over the notebook
    s = tmp / 'lab-settings' / '@jupyterlab' / 'apputils-extension'
    s.mkdir(parents=True)
    (s / 'notification.jupyterlab-settings').write_text(json.dumps(dict(fetchNews='false', checkForUpdates=False)))
    env.update(OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return env


def _stop(proc: subprocess.Popen, port: int, token: str):
    "Shut the server down through its API (it stops its kernels), then make sure that it and all its children are gone."
    family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []  # its kernels
    try: _get(f'http://127.0.0.1:{port}/api/shutdown', token, method='POST')
    except Exception: proc.terminate()
    try: proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for p in family:
        try: p.kill()
        except psutil.NoSuchProcess: pass
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f'processes left running after the JupyterLab test: {alive}'


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason='needs Debian chromium and chromedriver in /usr/bin (apt)')
def test_explorer_in_jupyterlab(tmp_path):
    "JupyterLab renders the explorer widget after 'run all'; a control click reaches the kernel; a screenshot is saved."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    root = tmp_path / 'lab'
    root.mkdir()
    kernelspec = dict(name='python3', display_name='Python 3', language='python')
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS],
                                            metadata=dict(kernelspec=kernelspec)), root / 'explore.ipynb')
    env = _jupyter_env(tmp_path / 'jupyter')
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / 'lab.log', 'w')
    args = [BIN / 'jupyter', 'lab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
            '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
            '--LabApp.expose_app_in_browser=True', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
            '--LabApp.extension_manager=readonly'] + (['--allow-root'] if os.geteuid() == 0 else [])
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    driver = None
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, f'jupyter lab exited:\n{(tmp_path / "lab.log").read_text()}'
            try:
                if _get(f'http://127.0.0.1:{port}/api/status', token) == 200: break
            except OSError: pass
            assert time.time() < deadline, \
                f'jupyter lab did not answer within 90 s:\n{(tmp_path / "lab.log").read_text()}'
            time.sleep(0.5)
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for a in CHROME_FLAGS + (f'--user-data-dir={tmp_path / "chrome"}',): opts.add_argument(a)
        home = tmp_path / 'chrome-home'
        home.mkdir()
        service = Service(str(CHROMEDRIVER), env=dict(os.environ, HOME=str(home)))
        driver = webdriver.Chrome(service=service, options=opts)
        driver.get(f'http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}')
        js = lambda s: driver.execute_script(s)
        def wait(seconds, cond, what):
            return WebDriverWait(driver, seconds, poll_frequency=0.5).until(lambda d: cond(), message=what)
        # the notebook's panel (shell.currentWidget follows focus, which a headless window may not give)
        nb = ("const app = window.jupyterapp, w = app && [...app.shell.widgets('main')]"
              ".find(x => x.context && x.context.path === 'explore.ipynb');")
        wait(90, lambda: js(nb + "return !!(w && w.content && w.content.widgets && w.content.widgets.length === 2"
                                  " && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                                  " && w.sessionContext.session.kernel.status === 'idle')"),
             'the notebook did not open with an idle kernel')
        # the ipywidgets JupyterLab extension (jupyterlab_widgets) is installed and active in the page
        assert js("return window.jupyterapp.isPluginActivated('@jupyter-widgets/jupyterlab-manager:plugin')"), \
            'the ipywidgets JupyterLab extension (jupyterlab_widgets) is not active'
        # the Run menu's 'Run All Cells'
        js(nb + "if (!app.shell.leftCollapsed) app.commands.execute('application:toggle-left-area');"
                "app.shell.activateById(w.id); app.commands.execute('notebook:run-all-cells');")
        imgs = ("return [...document.querySelectorAll('.jp-OutputArea-output img.widget-image')]"
                ".filter(i => i.naturalWidth > 0).length")
        sliders = lambda: driver.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output .widget-slider')
        wait(150, lambda: js(imgs) >= 5 and sliders(),
             'the explorer widget did not render (no panels or sliders)')
        wait(30, lambda: js(nb + "return w.content.widgets.every(c => c.model.executionCount)"
                                  " && w.sessionContext.session.kernel.status === 'idle'"),
             'the cells did not finish')
        text = js('return document.body.innerText')
        for bad in ('Error displaying widget', 'Loading widget', 'Traceback'):
            assert bad not in text, f'{bad!r} on the page:\n{text[-3000:]}'
        assert 'saved pseudo r1' in text and 'IoU per class, round 1' in text
        # a choice in the browser reaches the kernel and comes back: pick a class, the panels redraw and the
        # legend follows it. src: the truth panel's image, a new blob URL on every redraw
        src = lambda: js("return document.querySelector('.jp-OutputArea-output img.widget-image')"
                         ".parentElement.parentElement.querySelectorAll('img.widget-image')[1].src")
        swatches = lambda: js("return document.querySelectorAll("
                              "'.jp-OutputArea-output div[style*=\"line-height\"] > span').length")
        before, n_all = src(), swatches()
        assert n_all > 1, 'the legend shows fewer than two classes'
        dropdown = lambda: Select(driver.find_element(By.CSS_SELECTOR, '.widget-dropdown select'))
        dropdown().select_by_visible_text('red cross (unseen)')
        wait(30, lambda: src() != before and swatches() == 1,
             'picking a class in the browser did not redraw the panels and legend')
        dropdown().select_by_visible_text('all')
        wait(30, lambda: swatches() == n_all, "picking 'all' again did not restore the legend")
        box = driver.find_element(By.CSS_SELECTOR, '.jp-OutputArea-output .widget-vbox')
        js("document.querySelector('.jp-OutputArea-output .widget-vbox').scrollIntoView({block: 'start'})")
        time.sleep(0.5)
        out = (outputs_root() if project_root() else ROOT / 'outputs') / 'explorer-jupyterlab.png'
        out.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(out)) and out.stat().st_size > 10_000 and box.size['width'] > 500
    finally:
        if driver is not None: driver.quit()
        _stop(proc, port, token)
        log.close()
