"""Ctrl-C and SIGTERM of `vl-lab clean` and `vl-lab report`, on Ray and on the local pool: the command stops, says so
in one line (exit 130 for Ctrl-C, 143 for SIGTERM), leaves no process it started (Ray's GCS, raylet, agents and
workers; pool processes; a run's papermill and kernel), and the same command again resumes from the shards finished
before. A Ctrl-C is sent as a terminal sends it: SIGINT to the command's whole process group. A local Ray with 2 CPUs.
Waits have hang guards only (a command that does not stop fails with what it printed; nothing is timed)."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

from conftest import VL_LAB, run_cli
from vl_lab.synthetic import synth, synth_config

HANG_GUARD_S = 300
MARK = 'REUSED '  # put before the captions of the shards finished before an interrupt: it shows where they end up


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "800 images: 200 shards of 4, several seconds of work for 2 CPUs."
    d = tmp_path_factory.mktemp('interrupt') / 'raw'
    synth(d, synth_config(n_images=800, seed=12), progress=False)
    return d


class Command:
    """A `vl-lab` command started as a terminal starts it (a process group of its own), with every process it starts
    noted while it runs (Ray's processes rename themselves, `ray::IDLE`, so they are known by their parentage) and
    each line of its stderr with the time it came."""

    def __init__(self, *args, cwd=None):
        env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'VL_LAB_TRACK': 'none'}
        self.p = subprocess.Popen(
            [VL_LAB, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self.started, self.lines, self.out = {}, [], []
        self.threads = [
            threading.Thread(target=self._note_processes, daemon=True),
            threading.Thread(target=self._read, args=(self.p.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.p.stdout, self.out), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _note_processes(self):
        me = psutil.Process(self.p.pid)
        while self.p.poll() is None:
            try:
                for c in me.children(recursive=True):  # the name again each time: it changes at exec
                    self.started[c.pid] = (self.started.get(c.pid, (c.create_time(),))[0], c.name())
            except psutil.Error:
                pass
            time.sleep(0.05)

    def _read(self, stream, into):
        for line in stream:
            into.append((time.monotonic(), line.rstrip('\n')))

    def seen(self) -> str:
        return '\n'.join(line for _, line in self.lines[-30:])

    def wait_for(self, ok, what):
        t0 = time.monotonic()
        while not ok():
            assert self.p.poll() is None, f'it ended ({self.p.returncode}) before {what}:\n{self.seen()}'
            assert time.monotonic() - t0 < HANG_GUARD_S, f'waited {HANG_GUARD_S} s for {what}:\n{self.seen()}'
            time.sleep(0.02)

    def stop(self, sig, group=True) -> tuple[int, list[str], float]:
        "Send `sig` (to the process group: a terminal's Ctrl-C); its exit code, the lines it printed after, seconds."
        self.wait_for(lambda: len(self.started) >= 1, 'a process of its own')
        t0 = time.monotonic()
        (os.killpg if group else os.kill)(self.p.pid, sig)
        try:
            self.p.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f'still running {HANG_GUARD_S} s after {sig!r}:\n{self.seen()}') from None
        took = time.monotonic() - t0
        for t in self.threads[1:]:
            t.join(30)  # what it wrote is read at once, unless a process it left holds the pipe (then left() says)
        return self.p.returncode, [line for t, line in self.lines if t >= t0], took

    def left(self) -> list[str]:
        "The processes it started that still run (zombies are gone: they only wait to be reaped), a few seconds on."

        def alive():
            out = []
            for pid, (created, name) in self.started.items():
                try:
                    q = psutil.Process(pid)
                    if q.create_time() == created and q.status() != psutil.STATUS_ZOMBIE:
                        out.append(f'{pid} {name} ({q.name()}, parent {q.ppid()})')
                except psutil.NoSuchProcess:
                    pass
            return out

        t0 = time.monotonic()
        while (found := alive()) and time.monotonic() - t0 < 10:  # SIGTERM-ed by ray.shutdown, they may take a second
            time.sleep(0.1)
        return found


def ray_session_processes(pid: int) -> list[str]:
    "Processes whose command line names the Ray session a driver of process id `pid` started (/tmp/ray/session_*_PID)."
    sessions = [s.name for s in Path('/tmp/ray').glob(f'session_*_{pid}')]
    assert sessions, f'no Ray session of process {pid} in /tmp/ray'
    found = []
    for q in psutil.process_iter(['pid', 'cmdline', 'status']):
        cmd = ' '.join(q.info['cmdline'] or [])
        if q.info['status'] != psutil.STATUS_ZOMBIE and any(s in cmd for s in sessions):
            found.append(f"{q.info['pid']} {cmd[:160]}")
    return found


def shards(work: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(work.glob('shard-*'))}


def mark(work: Path, names) -> int:
    "Put MARK before every caption of the shards `names`; returns how many captions (manifest rows) they hold."
    n = 0
    for name in names:
        rows = [json.loads(line) for line in (work / name).read_text().splitlines()]
        for r in rows:
            for c in r['captions']:
                if isinstance(c['before'], str):
                    c['before'] = MARK + c['before'].removeprefix(MARK)
                    n += 1
        (work / name).write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return n


def marked(rows: list[dict]) -> bool:
    return all(c['before'].startswith(MARK) for r in rows for c in r['captions'] if isinstance(c['before'], str))


def test_ctrl_c_and_sigterm_stop_a_ray_cleaning_whole_and_it_resumes_from_the_finished_shards(corpus, tmp_path):
    out, work = tmp_path / 'ray', tmp_path / 'ray' / '.work'
    args = ['clean', corpus, out, '--quiet', '--shard-size', 4, '--executor', 'ray', '--workers', 2]

    c = Command(*args)
    c.wait_for(lambda: len(list(work.glob('shard-*.jsonl'))) >= 3, 'three shards')
    code, after, took = c.stop(signal.SIGINT)
    assert code == 130 and after == ['vl-lab clean: interrupted'], (code, c.seen())
    assert 'Traceback' not in c.seen() and 'SIGTERM received' not in c.seen(), c.seen()
    assert c.left() == [] and ray_session_processes(c.p.pid) == [], (c.left(), ray_session_processes(c.p.pid))
    first = shards(work)
    assert 3 <= len(first) < 200 and not (out / 'summary.json').exists(), len(first)
    rows = mark(work, first)
    print(f'Ctrl-C: exit 130 {took:.1f} s after SIGINT; {len(first)} of 200 shards done, {len(c.started)} processes')

    c = Command(*args)  # resumed, then stopped with SIGTERM (as `kill PID` does, or a scheduler ending a job)
    c.wait_for(lambda: len(list(work.glob('shard-*.jsonl'))) >= len(first) + 3, 'three more shards')
    code, after, took = c.stop(signal.SIGTERM, group=False)
    assert code == 143 and after == ['vl-lab clean: terminated (SIGTERM)'], (code, c.seen())
    assert 'Traceback' not in c.seen() and 'SIGTERM received' not in c.seen(), c.seen()
    assert c.left() == [] and ray_session_processes(c.p.pid) == [], (c.left(), ray_session_processes(c.p.pid))
    second = shards(work)
    assert all(marked(second[name]) for name in first), 'a shard finished before the Ctrl-C was done again'
    new = sorted(set(second) - set(first))
    rows += mark(work, new)
    print(f'SIGTERM: exit 143 {took:.1f} s after it; {len(first)} shards reused, {len(new)} more done')

    run_cli(*args, check=True)  # the same command again completes
    manifest = [json.loads(line) for line in (out / 'manifest.jsonl').read_text().splitlines()]
    reused = sum(str(m['caption_before']).startswith(MARK) for m in manifest)
    assert reused == rows, (reused, rows)  # every caption of every shard finished before is there, as it was written
    print(f'completed: {len(first) + len(new)} of 200 shards reused ({reused} manifest rows read from them)')

    run_cli('clean', corpus, tmp_path / 'local', '--quiet', '--shard-size', 4, check=True)  # uninterrupted, local
    unmark = [dict(m, caption_before=str(m['caption_before']).removeprefix(MARK)) for m in manifest]
    local = [json.loads(line) for line in (tmp_path / 'local' / 'manifest.jsonl').read_text().splitlines()]
    assert [{**m, 'caption_before': str(m['caption_before'])} for m in local] == unmark
    for f in ('summary.json', 'annotations.json'):
        assert (tmp_path / 'local' / f).read_bytes() == (out / f).read_bytes(), f


def test_ctrl_c_while_ray_starts_leaves_none_of_its_processes(corpus, tmp_path):
    """A Ctrl-C inside `ray.init` (here: once the raylet is up, while Ray starts its agents and connects) used to leave
    processes of the half-started instance running with no parent (the dashboard and runtime-env agents, seen), or to
    crash the interpreter at exit. Now Ray finishes starting, then is stopped whole."""
    c = Command('clean', corpus, tmp_path / 'out', '--quiet', '--shard-size', 4, '--executor', 'ray', '--workers', 2)
    c.wait_for(lambda: 'raylet' in {name for _, name in list(c.started.values())}, 'the raylet')
    code, after, took = c.stop(signal.SIGINT)
    assert code == 130 and after == ['vl-lab clean: interrupted'], (code, c.seen())
    assert 'Traceback' not in c.seen(), c.seen()
    assert c.left() == [] and ray_session_processes(c.p.pid) == [], (c.left(), ray_session_processes(c.p.pid))
    print(f'Ctrl-C while Ray starts: exit 130 {took:.1f} s after SIGINT, {len(c.started)} processes, none left')


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=['ctrl-c', 'sigterm', 'sigkill'])
def test_a_stopped_local_cleaning_leaves_no_pool_process(corpus, tmp_path, sig):
    """SIGTERM used to end the driver alone: its two forked workers went on without a parent, waiting forever (and
    holding its stdout and stderr, so whoever waited for the command's output hung). Now they die with it."""
    work = tmp_path / 'out' / '.work'
    c = Command('clean', corpus, tmp_path / 'out', '--quiet', '--shard-size', 4, '--workers', 2)
    c.wait_for(lambda: len(list(work.glob('shard-*.jsonl'))) >= 3, 'three shards')
    code, after, _ = c.stop(sig, group=sig == signal.SIGINT)
    expect = {
        signal.SIGINT: (130, ['vl-lab clean: interrupted']),
        signal.SIGTERM: (143, ['vl-lab clean: terminated (SIGTERM)']),
    }
    if sig in expect:
        assert (code, after) == expect[sig], c.seen()
    assert c.left() == [], c.left()
    assert len(c.started) >= 2, c.started  # its pool processes were there to be stopped


SLEEPER = """import pathlib, time
pathlib.Path('sleeping').write_text('')
time.sleep(900)
"""


def test_ctrl_c_stops_a_ray_report_with_its_runs_papermill_and_kernel(tmp_path):
    synth(tmp_path / 'shapes', synth_config('none', n_images=60, seed=4), progress=False)
    params = nbformat.v4.new_code_cell("seed = 0\ndata = ''", metadata={'tags': ['parameters']})
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(SLEEPER)])
    nbformat.write(nb, tmp_path / 'sleeper.ipynb')
    plan = dict(
        corpus=str(tmp_path / 'shapes'),
        preset='cpu-micro',
        timeout=900,
        experiments=[dict(name='sleeper', notebook=str(tmp_path / 'sleeper.ipynb'))],
    )
    (tmp_path / 'plan.yaml').write_text(yaml.safe_dump(plan))
    out = tmp_path / 'reports'
    args = ['report', '--plan', 'plan.yaml', '--out', out, '--data-root', 'data', '--executor', 'ray', '--jobs', 2]
    c = Command(*args, cwd=tmp_path)
    c.wait_for(lambda: any(out.glob('runs/*/sleeping')), 'the run to be executing')
    names = {name for _, name in c.started.values()}
    assert {'raylet', 'gcs_server'} <= names, names
    code, after, took = c.stop(signal.SIGINT)
    assert code == 130 and after == ['vl-lab report: interrupted'], (code, c.seen())
    assert 'Traceback' not in c.seen(), c.seen()
    assert c.left() == [] and ray_session_processes(c.p.pid) == [], (c.left(), ray_session_processes(c.p.pid))
    print(f'report: exit 130 {took:.1f} s after SIGINT; {len(c.started)} processes started, none left')
