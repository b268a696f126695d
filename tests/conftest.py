"""Shared by the test files: the tiny size of a test run, `zls` run in-process, and one finished tiny STRICT run."""
import contextlib, io
from pathlib import Path
import pytest
from zls.cli import main
from zls.pipeline import run_rounds

# small enough for seconds per round on 2 cores, big enough that every unseen class occurs
TINY = dict(n_train=48, n_val=24, iters0=40, iters=20, batch_size=8, eval_batch=24, log_every=20, ckpt_every=20)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: trains, starts processes or a browser (make test-fast leaves it out)')


@pytest.fixture(scope='session')
def strict_run(tmp_path_factory) -> Path:
    "Rounds 0-1 of a tiny STRICT run with its report, made once per session; tests that change it work on a copy."
    out = tmp_path_factory.mktemp('shared')
    run_rounds('tiny', rounds=1, out_root=out, data_root=str(out / 'data'), **TINY)
    return out / 'tiny'


def cli(*argv) -> tuple[int, str, str]:
    "Run `zls` in this process: exit code, stdout, stderr."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()
