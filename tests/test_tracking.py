"""Tracking: a run's scalars go to TensorBoard while it trains (accelerate's trackers), and change nothing else."""

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import VL_LAB, one_line_error, run_cli
from vl_lab.synthetic import synth, synth_config

TINY = ['--quiet', '--set', 'epochs=3']  # cpu-micro on 120 images: 3 optimizer steps an epoch
SAME = ('history.csv', 'metrics.json', 'params.yaml', 'best.pt', 'last.pt')  # best.pt and last.pt: the weights


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('track') / 'shapes'
    synth(d, synth_config('none', n_images=120), progress=False)
    return d


@pytest.fixture(scope='module')
def runs(corpus, tmp_path_factory):
    "The same tiny config trained twice, each in a process of its own: watched by TensorBoard, and not."
    root = tmp_path_factory.mktemp('runs')
    for track in ('tensorboard', 'none'):
        run_cli('train', 'cpu-micro', '--data', corpus, '--out', root / track, '--track', track, *TINY, check=True)
    return root


def scalars(folder: Path) -> dict:
    "{tag: [(step, value)]} of every event file in `folder`, as TensorBoard reads them."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={'scalars': 0})  # 0: keep every event, no sampling
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()['scalars']}


def history(run: Path) -> tuple[list, list]:
    "(step rows, epoch rows) of a run's history.csv."
    rows = list(csv.DictReader((run / 'history.csv').read_text().splitlines()))
    return [r for r in rows if r['kind'] == 'step'], [r for r in rows if r['kind'] == 'epoch']


def steps_of(series):
    return [step for step, _ in series]


def values_of(series):
    return [value for _, value in series]


def test_tracking_changes_none_of_the_run_files(runs):
    for name in SAME:
        assert (runs / 'tensorboard' / name).read_bytes() == (runs / 'none' / name).read_bytes(), name
    assert len(list((runs / 'tensorboard' / 'tensorboard').glob('events.out.tfevents.*'))) == 1
    assert not list((runs / 'none').rglob('events.out.tfevents.*')) and not (runs / 'none' / 'tensorboard').exists()


def test_the_event_file_holds_every_step_and_every_epoch(runs):
    s = scalars(runs / 'tensorboard' / 'tensorboard')
    steps, epochs = history(runs / 'tensorboard')
    assert (len(steps), len(epochs)) == (9, 3)
    for tag, column in (('train/loss', 'loss'), ('train/contrastive', 'contrastive'), ('train/lr', 'lr')):
        assert steps_of(s[tag]) == [int(r['step']) for r in steps], tag
        assert values_of(s[tag]) == pytest.approx([float(r[column]) for r in steps], rel=1e-6), tag  # float32
    for tag, column in (
        ('val/t2i_r1', 'val_t2i_r1'),
        ('val/i2t_r1', 'val_i2t_r1'),
        ('val/loss', 'val_loss'),
        ('train/epoch_loss', 'loss'),
    ):
        assert steps_of(s[tag]) == [int(r['step']) for r in epochs], tag
        assert values_of(s[tag]) == pytest.approx([float(r[column]) for r in epochs], rel=1e-6), tag
    assert steps_of(s['train/temperature']) == steps_of(s['train/samples_per_s']) == [int(r['step']) for r in steps]
    assert values_of(s['train/temperature'])[0] == pytest.approx(0.07, rel=0.01)  # CLIP's initial temperature
    products = [t * k for t, k in zip(values_of(s['train/temperature']), values_of(s['train/logit_scale']))]
    assert products == pytest.approx([1.0] * len(steps), rel=1e-5)
    assert all(v > 0 for v in values_of(s['train/samples_per_s']))
    assert 'samples' not in (runs / 'tensorboard' / 'history.csv').read_text()  # no timing in the history


def test_a_run_that_raises_keeps_its_events_and_its_resume_logs_each_step_once(corpus, tmp_path, monkeypatch):
    import torch
    import vl_lab.losses
    import vl_lab.train as vt
    from vl_lab.run import resolve_config

    real, calls = vl_lab.losses.compute_losses, []

    def poisoned(out, *a, **k):  # the fifth training step (the second of epoch 2) gives nan
        total, terms = real(out, *a, **k)
        calls.append(torch.is_grad_enabled())  # validation runs without gradients
        return (total * float('nan'), terms) if sum(calls) == 5 else (total, terms)

    monkeypatch.setattr(vl_lab.losses, 'compute_losses', poisoned)
    cfg = resolve_config('cpu-micro', {'epochs': 3}, data=corpus)
    run, tb = tmp_path / 'run', tmp_path / 'run' / 'tensorboard'
    with pytest.raises(vt.VLLabError, match='the loss became nan at stage stage0, epoch 2, step 5'):
        vt.train(cfg, run, progress=False, track='tensorboard')
    assert steps_of(scalars(tb)['train/loss']) == [1, 2, 3, 4]  # flushed although training raised; last.pt: step 3
    monkeypatch.setattr(vl_lab.losses, 'compute_losses', real)
    vt.train(cfg, run, resume=True, progress=False, track='tensorboard')
    assert len(list(tb.glob('events.out.tfevents.*'))) == 2  # the resumed run's event file beside the first
    s = scalars(tb)
    steps, epochs = history(run)
    assert steps_of(s['train/loss']) == [int(r['step']) for r in steps] == list(range(1, 10))  # step 4 once
    assert values_of(s['train/loss']) == pytest.approx([float(r['loss']) for r in steps], rel=1e-6)
    assert steps_of(s['val/t2i_r1']) == [int(r['step']) for r in epochs] == [3, 6, 9]


def test_an_unknown_or_missing_tracker_is_one_line_before_training(corpus, tmp_path, monkeypatch):
    import vl_lab.train as vt
    from vl_lab.run import resolve_config

    monkeypatch.setitem(sys.modules, 'wandb', None)  # not installed, whatever this machine holds
    cfg = resolve_config('cpu-micro', {}, data=corpus)
    said = {'wandb': r'wandb is not installed \(pip install wandb\)', 'bogus': "unknown tracker 'bogus'"}
    for track, says in said.items():
        with pytest.raises(vt.VLLabError, match=says) as e:
            vt.train(cfg, tmp_path / track, progress=False, track=track)
        assert len(str(e.value).splitlines()) == 1
        assert not (tmp_path / track).exists()  # checked before anything is made
    line = one_line_error(run_cli('train', 'cpu-micro', '--data', corpus, '--out', tmp_path / 'r', '--track', 'bogus'))
    assert "track 'bogus': unknown tracker 'bogus'" in line and not (tmp_path / 'r').exists()
    monkeypatch.setenv('VL_LAB_TRACK', 'tensorboard,bogus')  # the default comes from the environment
    line = one_line_error(run_cli('train', 'cpu-micro', '--data', corpus, '--out', tmp_path / 'r'))
    assert "VL_LAB_TRACK 'tensorboard,bogus': unknown tracker 'bogus'" in line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_vl_lab_tensorboard_serves_the_runs_of_a_report_folder(runs, tmp_path):
    report = tmp_path / 'reports'
    shutil.copytree(runs / 'tensorboard', report / 'runs' / 'abc123')  # a run folder of a plan
    port = free_port()
    p = subprocess.Popen(
        [VL_LAB, 'tensorboard', '--out', str(report), '--port', str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    status, listed = None, []
    try:
        guard = time.time() + 600  # against a hang only: TensorBoard starts in seconds
        while p.poll() is None and time.time() < guard and not (status == 200 and listed):
            try:
                status, _ = get(f'http://127.0.0.1:{port}/')
                listed = json.loads(get(f'http://127.0.0.1:{port}/data/runs')[1])  # filled once it has read the logdir
            except OSError:
                pass
            time.sleep(0.5)
        cmdline = Path(f'/proc/{p.pid}/cmdline').read_bytes().split(b'\0') if Path('/proc').is_dir() else None
    finally:
        p.terminate()
        out, err = p.communicate()
    assert status == 200, err[-3000:]
    assert listed == ['abc123/tensorboard'], listed
    assert cmdline is None or cmdline[cmdline.index(b'--host') + 1] == b'127.0.0.1', cmdline  # this machine only
    assert f'http://127.0.0.1:{port}/' in out
    line = one_line_error(run_cli('tensorboard', '--out', tmp_path / 'nothing-here'))
    assert 'nothing-here/runs: no runs to show' in line
