"""The runner under faults: a killed driver (SIGKILL, SIGINT), torn outputs, two reports on one folder, a notebook
saved from JupyterLab, and a fault-injection build killed at random moments and restarted until it completes.
Each test is named after what it protects. Waits have hang guards only (a broken runner fails; nothing is timed)."""

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import ROOT, VL_LAB
from vl_lab.runner import plan_runs, read_plan
from vl_lab.synthetic import synth, synth_config

NB = ROOT / 'nbs' / 'experiments' / 'train_eval.ipynb'
HANG_GUARD_S = 600


def write_plan(d: Path, seeds=(0, 1, 2), notebook=NB, epochs=3, corpus=None) -> Path:
    plan = dict(
        corpus=str(corpus or d / 'shapes'),
        preset='cpu-micro',
        experiments=[
            dict(
                name='tiny',
                notebook=str(notebook),
                seeds=list(seeds),
                params=dict(data='raw', overrides=[f'epochs={epochs}']),
            )
        ],
    )
    (d / 'plan.yaml').write_text(yaml.safe_dump(plan))
    return d / 'plan.yaml'


def start(d: Path, out: Path, *extra) -> subprocess.Popen:
    "`vl-lab report` on the plan of `d` into `out`, in a session of its own (a terminal's Ctrl-C reaches it alone)."
    return subprocess.Popen(
        [VL_LAB, 'report', '--plan', str(d / 'plan.yaml'), '--out', str(out), '--jobs', '1', *extra],
        cwd=d,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'VL_LAB_TRACK': 'none'},
        start_new_session=True,
    )


def leftovers(out: Path) -> list[str]:
    "Processes working in a run folder of `out` (papermill, kernels): none may outlive the runner that started them."
    found = []
    for p in Path('/proc').iterdir():
        if p.name.isdigit():
            try:
                cwd = os.readlink(p / 'cwd')
                cmd = (p / 'cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
            except OSError:
                continue
            if cwd.startswith(str(out.resolve())) or str(out.resolve()) in cmd:
                found.append(f'{p.name}: {cmd[:160]}')
    return found


def wait_for(ok, what):
    t0 = time.monotonic()
    while not ok():
        assert time.monotonic() - t0 < HANG_GUARD_S, f'waited {HANG_GUARD_S} s for {what}'
        time.sleep(0.2)


def no_leftovers(out: Path):
    """The runner's children are gone a moment after it: papermill at once (it dies with its runner), its kernel
    within about a second (it polls its parent). A few seconds of grace: an orphan would run on for the whole run."""
    t0 = time.monotonic()
    while (left := leftovers(out)) and time.monotonic() - t0 < 5:
        time.sleep(0.1)
    assert left == [], left


def executions(out: Path) -> dict:
    "Per run id, the execution events its folder records (start and end, with pid and time)."
    return {
        p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
        for p in (out / 'runs').glob('*/executions.jsonl')
    }


def metrics(out: Path) -> dict:
    return {p.parent.name: p.read_bytes() for p in (out / 'runs').glob('*/metrics.json')}


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A 120-image corpus, a three-run plan, and its uninterrupted build (the reference)."
    d = tmp_path_factory.mktemp('faults')
    synth(d / 'shapes', synth_config('none', n_images=120, seed=3), progress=False)
    write_plan(d)
    p = start(d, d / 'reference')
    out, err = p.communicate()
    assert p.returncode == 0, err[-2000:]
    ref = metrics(d / 'reference')
    assert len(ref) == 3
    return d, ref


def test_a_killed_runner_leaves_no_process_behind(lab, tmp_path):
    "SIGKILL, Ctrl-C (SIGINT) or SIGTERM of the runner while a long run trains: its papermill and kernel end with it."
    d, _ = lab
    write_plan(tmp_path, seeds=(0,), epochs=40, corpus=d / 'shapes')  # a run of a minute or more
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
        out = tmp_path / f'reports-{sig.name}'
        p = start(tmp_path, out)
        wait_for(lambda: any(out.glob('runs/*/run.json')), 'a run to start')
        time.sleep(3)  # the kernel is up and training
        os.kill(p.pid, sig)
        _, err = p.communicate()
        if sig == signal.SIGINT:
            assert p.returncode == 130 and 'Traceback' not in err and err.strip().count('\n') == 0, err
        no_leftovers(out)
        assert not any(out.glob('runs/*/metrics.json'))  # nothing went on writing into the run folder


def test_a_run_whose_kernel_survived_is_never_executed_into_twice(lab, tmp_path):
    """Killed with SIGKILL, the runner's lease stays; the next runner takes it over once nothing of the dead one runs,
    and finishes the run as an uninterrupted build does."""
    d, ref = lab
    out = tmp_path / 'reports'
    p = start(d, out)
    wait_for(lambda: any(out.glob('runs/*/run.json')), 'a run to start')
    time.sleep(2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p = start(d, out)
    _, err = p.communicate()
    assert p.returncode == 0, err[-2000:]
    ex = executions(out)
    starts = [e for es in ex.values() for e in es if e['event'] == 'start']
    assert any(e.get('took_over_from') for e in starts)  # the dead runner's lease was taken over
    assert metrics(out) == ref and leftovers(out) == []


def test_a_torn_metrics_file_is_set_aside_and_its_run_executed_again(lab, tmp_path):
    d, ref = lab
    out = tmp_path / 'reports'
    shutil.copytree(d / 'reference', out)
    run = next(iter(sorted(ref)))
    (out / 'runs' / run / 'metrics.json').write_bytes(ref[run][: len(ref[run]) // 2])  # truncated: a full disk
    p = start(d, out)
    stdout, err = p.communicate()
    assert p.returncode == 0 and 'Traceback' not in err, err[-2000:]
    assert f'({run}): metrics.json does not parse (truncated?); set aside in' in stdout
    assert 'plan: 3 runs, 1 to execute, 2 complete already' in stdout
    (aside,) = (out / 'runs' / run).glob('torn-*/metrics.json')
    assert aside.read_bytes() == ref[run][: len(ref[run]) // 2]  # kept, not deleted
    assert metrics(out) == ref


def test_two_reports_on_one_folder_execute_each_run_once(lab, tmp_path):
    d, ref = lab
    out = tmp_path / 'reports'
    a, b = start(d, out), start(d, out)
    (_, err_a), (_, err_b) = a.communicate(), b.communicate()
    assert (a.returncode, b.returncode) == (0, 0), (err_a[-1500:], err_b[-1500:])
    starts = {run: [e for e in es if e['event'] == 'start'] for run, es in executions(out).items()}
    assert sorted(starts) == sorted(ref) and all(len(s) == 1 for s in starts.values()), starts
    assert len({e['pid'] for s in starts.values() for e in s}) == 2  # both took part
    assert metrics(out) == ref


def test_a_notebook_saved_with_outputs_keeps_its_run_ids(lab, tmp_path):
    "JupyterLab saves outputs, execution counts and kernel metadata into a notebook a researcher ran: no run changes."
    d, _ = lab
    nb = tmp_path / 'train_eval.ipynb'
    shutil.copy(NB, nb)
    plan = read_plan(write_plan(tmp_path, notebook=nb))
    corpora = {'raw': d / 'shapes'}
    before = [r.run_id for r in plan_runs(plan, corpora, tmp_path / 'out')]
    saved = nbformat.read(nb, as_version=4)
    for i, cell in enumerate(c for c in saved.cells if c.cell_type == 'code'):
        cell.execution_count = i + 1
        cell.outputs = [nbformat.v4.new_output('stream', name='stdout', text='a line\n')]
    saved.metadata['kernelspec'] = dict(name='python3', display_name='Python 3 (ipykernel)', language='python')
    saved.metadata['language_info'] = dict(name='python', version='3.11.2')
    nbformat.write(saved, nb)
    assert [r.run_id for r in plan_runs(plan, corpora, tmp_path / 'out')] == before
    saved.cells[-1].source += '\nprint("one more line")'  # what it executes: every run changes
    nbformat.write(saved, nb)
    assert not set(before) & {r.run_id for r in plan_runs(plan, corpora, tmp_path / 'out')}


def test_killed_at_random_moments_and_restarted_the_build_ends_as_an_uninterrupted_one(lab, tmp_path):
    """Fault injection: the runner killed 5 times (SIGKILL or SIGINT, at a random moment of the build), restarted
    each time; then one more start completes it. No kernel outlives a runner, no run is executed by two processes at
    once, and every metrics.json is byte for byte the reference build's."""
    d, ref = lab
    out = tmp_path / 'reports'
    seed = int(os.environ.get('VL_LAB_FAULT_SEED', random.randrange(10**6)))
    rng = random.Random(seed)
    schedule = []
    for _ in range(5):
        sig, delay = rng.choice((signal.SIGKILL, signal.SIGINT)), rng.uniform(1.0, 20.0)
        schedule.append((sig.name, round(delay, 1)))
        p = start(d, out)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, sig)
            p.wait()
        no_leftovers(out)
    p = start(d, out)
    _, err = p.communicate()
    assert p.returncode == 0, (seed, schedule, err[-2000:])
    assert metrics(out) == ref, (seed, schedule)
    for run, es in executions(out).items():  # one execution at a time: each start follows the end of the one before,
        for before, e in zip(es, es[1:]):  # or takes over the lease of a runner that died inside it (SIGKILL)
            if e['event'] == 'start' and before['event'] == 'start':
                assert e.get('took_over_from') == before['pid'], (seed, schedule, run, es)
        assert es[-1]['event'] == 'end' and es[-1]['status'] == 'done', (seed, schedule, run, es)
    assert leftovers(out) == []
