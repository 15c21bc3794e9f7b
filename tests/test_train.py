"""The training loop: it learns, it is deterministic, it resumes exactly after SIGKILL, DDP matches one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import VL_LAB, one_line_error, run_cli
from vl_lab.synthetic import synth, synth_config

SMALL = ['--set', 'warmup_steps=5', '--set', 'lr=5e-4']  # on top of the cpu-small preset


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('train') / 'shapes'
    synth(d, synth_config('none', n_images=400, seed=3), progress=False)
    return d


def files(run):
    return (run / 'history.csv').read_text(), json.loads((run / 'metrics.json').read_text())


def test_same_seed_same_history_and_metrics(corpus, tmp_path):
    for name in ('a', 'b'):
        run_cli(
            'train',
            'cpu-small',
            '--data',
            corpus,
            '--out',
            tmp_path / name,
            '--quiet',
            '--set',
            'epochs=2',
            *SMALL,
            check=True,
        )
    (ha, ma), (hb, mb) = files(tmp_path / 'a'), files(tmp_path / 'b')
    assert ha == hb and ma == mb
    assert ha.count('\nstep,') == 2 * (320 // 32) and ha.count('\nepoch,') == 2


def test_resume_after_sigkill_gives_the_same_result(corpus, tmp_path):
    args = ['train', 'cpu-small', '--data', corpus, '--quiet', '--set', 'epochs=3', *SMALL]
    run_cli(*args, '--out', tmp_path / 'whole', check=True)
    run = tmp_path / 'killed'
    p = subprocess.Popen(
        [VL_LAB, *map(str, args), '--out', str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not (run / 'last.pt').exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the second epoch
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (run / 'metrics.json').exists()
    r = run_cli(*args, '--out', run, '--resume')
    assert r.returncode == 0, r.stderr
    assert files(run) == files(tmp_path / 'whole')


def test_ddp_two_processes_match_one(corpus, tmp_path):
    # GroupNorm: PyTorch syncs BatchNorm statistics across GPU processes only
    args = ['train', 'cpu-small', '--data', corpus, '--quiet', '--set', 'epochs=2', '--set', 'model.conv_norm=group']
    args += SMALL
    run_cli(*args, '--out', tmp_path / 'one', check=True)
    torchrun = str(Path(sys.executable).parent / 'torchrun')

    def torchrun_two(*extra, out='two'):
        cmd = [
            torchrun,
            '--standalone',
            '--nproc_per_node=2',
            VL_LAB,
            *map(str, args),
            *extra,
            '--out',
            str(tmp_path / out),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)

    r = torchrun_two()
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / 'one' / 'metrics.json').read_text())['final']
    two = json.loads((tmp_path / 'two' / 'metrics.json').read_text())['final']
    prov = json.loads((tmp_path / 'two' / 'provenance.json').read_text())
    assert prov['processes'] == 2
    assert abs(one['val_loss'] - two['val_loss']) < 0.02, (one, two)
    assert abs(one['val_t2i_r1'] - two['val_t2i_r1']) <= 0.05, (one, two)
    r = torchrun_two('--set', 'model.conv_norm=batch', out='bn')  # BatchNorm: a clear error, not per-process statistics
    assert r.returncode != 0
    assert 'syncs BatchNorm statistics on GPUs only' in r.stderr


def test_bad_input(corpus, tmp_path):
    assert 'unknown preset' in one_line_error(run_cli('train', 'cpu-huge', '--data', corpus, '--out', tmp_path / 'r'))
    assert "unknown config key 'model.depth'" in one_line_error(
        run_cli('train', 'cpu-tiny', '--data', corpus, '--out', tmp_path / 'r', '--set', 'model.depth=3')
    )
    (tmp_path / 'empty').mkdir()
    assert 'cannot tell the corpus format' in one_line_error(
        run_cli('train', 'cpu-tiny', '--data', tmp_path / 'empty', '--out', tmp_path / 'r')
    )
    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'last.pt').write_bytes(b'\x80\x04garbage')
    assert 'not a readable checkpoint' in one_line_error(
        run_cli('train', 'cpu-tiny', '--data', corpus, '--out', tmp_path / 'broken', '--resume')
    )
    assert 'no checkpoint there' in one_line_error(
        run_cli('train', 'cpu-tiny', '--data', corpus, '--out', tmp_path / 'none', '--resume')
    )


def test_nonfinite_loss_stops_with_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    import torch
    import vl_lab.losses
    import vl_lab.train as vt
    from vl_lab.run import load_checkpoint, resolve_config

    real, calls = vl_lab.losses.compute_losses, []

    def poisoned(out, *a, **k):
        total, terms = real(out, *a, **k)
        calls.append(1)
        return (total * float('nan'), terms) if len(calls) > 12 else (total, terms)

    monkeypatch.setattr(vl_lab.losses, 'compute_losses', poisoned)  # the public loss function the loop calls
    cfg = resolve_config('cpu-small', [x for x in SMALL if x != '--set'] + ['epochs=3', 'max_val=40'], data=corpus)
    with pytest.raises(
        vt.VLLabError, match=r'the loss became nan at stage stage0, epoch 2.*last good checkpoint is .*last\.pt'
    ):
        vt.train(cfg, tmp_path / 'run', progress=False)
    ck = load_checkpoint(tmp_path / 'run' / 'last.pt')
    assert ck['state']['epoch'] == 1 and all(
        torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point()
    )


def test_cpu_tiny_learns_on_the_default_corpus(tmp_path):
    "The acceptance run: `vl-lab train cpu-tiny` (its own recipe, nothing overridden) on the cleaned default corpus."
    synth(tmp_path / 'shapes', synth_config(), progress=False)
    run_cli('clean', tmp_path / 'shapes', tmp_path / 'shapes-clean', '--quiet', check=True)
    r = run_cli(
        'train', 'cpu-tiny', '--data', tmp_path / 'shapes-clean', '--out', tmp_path / 'run', '--quiet', check=True
    )
    final = json.loads((tmp_path / 'run' / 'metrics.json').read_text())['final']
    print(r.stdout)
    # its validation captions still hold the corpus's mismatched captions (the rules do not remove them): 0.25 is well
    # under what the recipe reaches (0.3-0.4) and 45x chance; the lab notes' recipe reached 0.11 here
    assert final['val_t2i_r1'] >= 0.25, final
    assert 'val text-to-image R@1' in r.stdout
