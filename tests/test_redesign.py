"""Tiny STRICT, supervised and FS^4 runs give the numbers recorded in `tests/data/tiny_runs*.json`.

The reference first held the metrics of the code of commit f5cec9a (before the methods became plug-ins), and
today's code matched them on the machine where they were made. Numbers depend on the CPU kernels torch runs, so
the file records the `zls.core.kernels_signature` it was made under. zls's portable kernels (`kernels=portable`, an
option; torch's own kernels are the default) give the same numbers on every Intel CPU with AVX2, so each comparison
runs in a fresh process that asks for them, wherever they can be had, which also tests that claim on each machine CI
lands on; elsewhere (a CPU without AVX2, or a non-Intel one, whose MKL refuses its AVX2 branch) it is skipped, saying
why. Recorded under portable kernels with `python tests/test_redesign.py portable`.

torch's own kernels (the default) give the same numbers on the same CPU kind only: `tiny_runs_native.json` records
them with the CPU's signature (`zls.core.cpu_signature`) and the kernels', and is compared where both match
(recorded with `python tests/test_redesign.py native`).
Any change of a number under the same signature means a change altered what a method computes.
"""
import contextlib, io, json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from zls.core import cpu_signature, kernels_signature, pin_kernels

pytestmark = pytest.mark.slow  # trains tiny runs

REF_FILES = {k: Path(__file__).parent / 'data' / f'tiny_runs{"" if k == "portable" else "_" + k}.json'
             for k in ('portable', 'native')}
REFS = {k: json.loads(f.read_text()) if f.is_file() else dict(kernels=None, cpu=None, runs={})
        for k, f in REF_FILES.items()}
TINY = dict(n_train=48, n_val=24, iters0=40, iters=20, batch_size=8, eval_batch=24, log_every=20, ckpt_every=20)
# name: (reference run, rounds compared, parameters today)
RUNS = {'strict': ('strict', 2, {}),
        'supervised': ('pseudoseg', 0, dict(method='supervised', background='seen', label_fraction=0.25)),
        'fs4': ('fs4', 1, dict(method='fs4', fs4_init_images=16, fs4_sample_pixels=5000))}


def same(a, b) -> bool:
    "Equal, NaN included (a class absent from the validation set has IoU NaN)."
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('redesign') / 'data')


def tiny_metrics(name, data_root, run_dir) -> dict:
    "{'<reference run>/round_<k>': plain, plain_iou and loss log} of one tiny run, one thread, in-process."
    from zls.pipeline import evaluate_round, label_round, prepare_round, train_round
    ref_run, rounds, extra = RUNS[name]
    params, out = dict(TINY, data_root=data_root, **extra), {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was made with one thread
    try:
        for k in range(rounds + 1):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                r = prepare_round(params, run_dir=run_dir, k=k)
                label_round(r)
                train_round(r)
                m = evaluate_round(r)
            log = [{key: v for key, v in e.items() if key != 'secs'} for e in m['log']]
            out[f'{ref_run}/round_{k}'] = dict(plain=m['plain'], plain_iou=m.get('plain_iou'), log=log)
    finally: torch.set_num_threads(threads)
    return out


def metrics_under(kernels, name, data_root, run_dir) -> dict:
    "`tiny_metrics` in a fresh process under `kernels`: {'kernels': ..., 'cpu': ..., 'runs': ...} or {'skip': why}."
    env = {k: v for k, v in os.environ.items() if k != 'ZLS_KERNELS'}
    res = subprocess.run([sys.executable, __file__, '--compare', kernels, name, data_root, str(run_dir)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize('kernels', list(REFS))
@pytest.mark.parametrize('name', list(RUNS))
def test_same_numbers_as_recorded(name, kernels, data_root, tmp_path):
    got, ref = metrics_under(kernels, name, data_root, tmp_path / name), REFS[kernels]
    if 'skip' in got: pytest.skip(got['skip'])
    where = ('kernels',) if kernels == 'portable' else ('kernels', 'cpu')  # native: the CPU kind counts too
    if any(got[k] != ref.get(k) for k in where):
        pytest.skip(f'reference recorded under {[ref.get(k) for k in where]}, this process runs '
                    f'{[got[k] for k in where]}: results differ across these, so they are compared only under the '
                    'recording ones')
    for key, run in got['runs'].items():
        assert same(run, ref['runs'][key]), f'{name} {key}: {run} differs from {ref["runs"][key]}'


def _in_fresh_process(kernels, name, data_root, run_dir) -> dict:
    "This file run as `--compare KERNELS NAME DATA_ROOT RUN_DIR`: pin the kernels first, then the tiny run."
    try: sig = pin_kernels(kernels)
    except RuntimeError as e: return dict(skip=str(e))
    return dict(kernels=sig, cpu=cpu_signature(), runs=tiny_metrics(name, data_root, Path(run_dir)))


if __name__ == '__main__' and sys.argv[1:2] == ['--compare']:
    print(json.dumps(_in_fresh_process(*sys.argv[2:]), sort_keys=True))
elif __name__ == '__main__':  # re-record a reference on this machine: python tests/test_redesign.py portable|native
    import tempfile
    kernels = sys.argv[1]
    pin_kernels(kernels)
    tmp = Path(tempfile.mkdtemp())
    runs = {k: v for name in RUNS for k, v in tiny_metrics(name, str(tmp / 'data'), tmp / name).items()}
    REF_FILES[kernels].write_text(json.dumps(dict(kernels=kernels_signature(), cpu=cpu_signature(), runs=runs),
                                             indent=1, sort_keys=True) + '\n')
    print(f'{REF_FILES[kernels]}: {len(runs)} rounds recorded under {kernels_signature()!r} on {cpu_signature()!r}')
