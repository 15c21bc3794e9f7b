"""JupyterLab as a researcher meets it: started by `make lab`'s command line (on a free loopback port, with a token),
an experiment notebook and a library notebook opened in headless Chromium and run cell by cell through the page
(Shift+Enter, as a person does: not papermill, not the kernel API), then saved with Ctrl+S. Every figure cell must
show an image, no cell may show an error or anything on stderr, and the saved notebook must be as clean as the one
committed. The lab runs in a copy of the project, so a failing run never writes outputs into the working tree."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from test_browser import CHROMIUM, Page

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ['nbs/experiments/train_eval.ipynb', 'nbs/20_train.ipynb']  # an experiment notebook, a library notebook
FIGURE = re.compile(r'plt\.show\(\)|\.plot\(|\bsubplots\(')  # a cell that draws a figure for the reader
HANG_GUARD_S = 1800  # only so a broken page cannot hang CI: a wait this long fails with what the page showed
CELLS_JS = """Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')).map(c => ({
  code: c.classList.contains('jp-CodeCell'),
  prompt: (c.querySelector('.jp-InputPrompt') || {}).textContent || '',
  images: c.querySelectorAll('.jp-OutputArea-output img').length,
  stderr: Array.from(c.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')).map(o => o.textContent),
}))"""
STATUS_JS = """(document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator')
  || {getAttribute: () => null}).getAttribute('data-status')"""
DIRTY_JS = "document.querySelectorAll('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty').length"
ACTIVE_JS = """(p => [
  p ? Array.from(p.querySelectorAll('.jp-Cell')).findIndex(c => c.classList.contains('jp-mod-active')) : -1,
  !!(p && p.querySelector('.jp-Notebook.jp-mod-commandMode')),
  !!(p && p.contains(document.activeElement))])(document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)'))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def project_copy(d: Path) -> Path:
    "What `make lab` needs of the project: its Makefile, settings, tools and notebooks; the .venv is the project's."
    proj = d / 'project'
    proj.mkdir()
    for name in ('Makefile', 'settings.ini', 'setup.py', 'requirements.lock'):
        shutil.copy(ROOT / name, proj / name)
    for name in ('tools', 'nbs'):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns('.ipynb_checkpoints', '__pycache__'))
    (proj / '.venv').symlink_to(ROOT / '.venv')
    return proj


def kernels_of(runtime: Path) -> list[int]:
    "Pids of the kernels whose connection files are in `runtime` (this lab's kernels, no one else's)."
    pids = []
    for p in Path('/proc').iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / 'cmdline').read_bytes().decode(errors='replace')
            except OSError:
                continue
            if 'ipykernel' in cmd and str(runtime) in cmd:
                pids.append(int(p.name))
    return pids


class Lab:
    "JupyterLab started by `make lab` in a project copy, and one Chromium tab on it."

    def __init__(self, d: Path):
        self.d, self.proj, self.port, self.token = d, project_copy(d), free_port(), secrets.token_hex(16)
        self.committed = {rel: (self.proj / rel).read_bytes() for rel in NOTEBOOKS}  # clean, as make test checks
        self.runtime = d / 'runtime'
        env = dict(
            os.environ,
            JUPYTER_PORT=str(self.port),
            JUPYTER_TOKEN=self.token,
            JUPYTER_CONFIG_DIR=str(d / 'config'),  # a user's own config stays out of it, and is not written
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTERLAB_SETTINGS_DIR=str(d / 'settings'),
            JUPYTERLAB_WORKSPACES_DIR=str(d / 'workspaces'),
        )
        # `make lab` as typed (the venv is already made: -o venv); `make test` runs this with MPLBACKEND=Agg set
        self.log = open(d / 'lab.log', 'w')
        self.proc = subprocess.Popen(
            ['make', '-s', '-o', 'venv', 'lab'],
            cwd=self.proj,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait(lambda: self.api('status') is not None, 'JupyterLab to answer')
        (d / 'profile').mkdir()
        self.page = Page(d / 'profile')
        self.page.call('Emulation.setDeviceMetricsOverride', width=1280, height=1000, deviceScaleFactor=1, mobile=False)

    def api(self, path, method='GET'):
        req = urllib.request.Request(f'http://127.0.0.1:{self.port}/api/{path}?token={self.token}', method=method)
        try:
            return json.loads(urllib.request.urlopen(req, timeout=10).read() or 'null')
        except OSError:
            return None

    def wait(self, ok, what):
        t0 = time.monotonic()
        while not ok():
            assert self.proc.poll() is None, f'make lab exited: {(self.d / "lab.log").read_text()[-2000:]}'
            assert time.monotonic() - t0 < HANG_GUARD_S, f'waited {HANG_GUARD_S} s for {what}'
            time.sleep(0.5)

    def js(self, expression):
        return self.page.call('Runtime.evaluate', expression=expression, returnByValue=True)['result'].get('value')

    def key(self, key, code, vk, modifiers=0):
        for kind in ('keyDown', 'keyUp'):
            self.page.call(
                'Input.dispatchKeyEvent', type=kind, key=key, code=code, windowsVirtualKeyCode=vk, modifiers=modifiers
            )

    def click(self, selector):
        x, y = self.js(f"(r => [r.x + 5, r.y + 10])(document.querySelector('{selector}').getBoundingClientRect())")
        for kind in ('mousePressed', 'mouseReleased'):
            self.page.call('Input.dispatchMouseEvent', type=kind, x=x, y=y, button='left', clickCount=1)

    def run_notebook(self, rel: str) -> list[dict]:
        "Open `rel`, run every cell with Shift+Enter (the last with Ctrl+Enter: no new cell), save with Ctrl+S."
        n = len(json.loads((self.proj / rel).read_text())['cells'])
        self.page.call('Page.navigate', url=f'http://127.0.0.1:{self.port}/lab/tree/{rel}?token={self.token}')
        self.wait(lambda: len(self.js(CELLS_JS) or []) == n and self.js(STATUS_JS) == 'idle', f'{rel} to open')
        self.click('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')  # the first cell, at its left edge
        self.key('Escape', 'Escape', 27)  # command mode
        self.wait(lambda: self.js(ACTIVE_JS) == [0, True, True], f'{rel}: its first cell selected')
        for i in range(n):
            # as a person does: a key once the page shows the cell selected, the next once the selection moved on (a
            # key sent before the page caught up would run a cell twice and leave another one unrun)
            self.key('Enter', 'Enter', 13, modifiers=8 if i < n - 1 else 2)  # Shift+Enter; Ctrl+Enter on the last
            self.wait(lambda: self.js(ACTIVE_JS)[0] == min(i + 1, n - 1), f'{rel}: the selection past cell {i}')
        code = [c for c in json.loads((self.proj / rel).read_text())['cells'] if c['cell_type'] == 'code']
        self.wait(
            lambda: self.js(STATUS_JS) == 'idle' and not any('*' in c['prompt'] for c in self.js(CELLS_JS)),
            f'the cells of {rel} to run',
        )
        mtime = (self.proj / rel).stat().st_mtime_ns
        self.key('s', 'KeyS', 83, modifiers=2)  # Ctrl+S
        self.wait(lambda: self.js(DIRTY_JS) == 0 and (self.proj / rel).stat().st_mtime_ns != mtime, f'{rel} saved')
        shown = self.js(CELLS_JS)
        assert len(shown) == n, f'{rel}: {len(shown)} cells on the page, {n} in the file'
        cells = [c for c in shown if c['code']]
        return [dict(c, source=''.join(s['source'])) for c, s in zip(cells, code)]

    def stop(self):
        self.page.close()
        self.api('shutdown', method='POST')  # the server shuts its kernels down, then exits
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    assert CHROMIUM, 'headless Chromium is needed (apt-get install chromium; .ci/run installs it)'
    lab = Lab(tmp_path_factory.mktemp('lab'))
    shown = {rel: lab.run_notebook(rel) for rel in NOTEBOOKS}
    yield lab, shown
    if lab.proc.poll() is None:
        lab.stop()


@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_every_figure_cell_shows_an_image_and_no_cell_an_error(lab, rel):
    _, shown = lab
    cells = shown[rel]
    figures = [c for c in cells if FIGURE.search(c['source'])]
    assert figures, f'{rel} has no figure cell: choose a notebook that draws'
    assert all(re.fullmatch(r'\[\d+\]:', c['prompt'].strip()) for c in cells), [c['prompt'] for c in cells]
    assert [c['stderr'] for c in cells if c['stderr']] == []  # no traceback, no warning
    assert [c['images'] for c in figures if c['images'] == 0] == [], f'a figure cell of {rel} shows no image'


@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_a_notebook_saved_from_the_lab_is_clean(lab, rel):
    "Saved from the page after its cells ran, the notebook is byte for byte the committed (clean) one."
    lab_, _ = lab
    saved = lab_.proj / rel
    nb = json.loads(saved.read_text())
    assert [c for c in nb['cells'] if c.get('outputs') or c.get('execution_count')] == []
    assert saved.read_bytes() == lab_.committed[rel]
    r = subprocess.run([str(ROOT / '.venv/bin/nbdev_clean'), '--fname', rel], cwd=lab_.proj, capture_output=True)
    assert (
        r.returncode == 0 and saved.read_bytes() == lab_.committed[rel]
    )  # make test's gate: nbdev_clean changes nothing


def test_stopping_the_lab_stops_its_kernels(lab):
    lab_, _ = lab
    assert kernels_of(lab_.runtime), 'the notebooks run in kernels of this lab'
    lab_.stop()
    assert lab_.proc.returncode is not None and kernels_of(lab_.runtime) == []
