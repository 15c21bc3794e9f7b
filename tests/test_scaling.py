"""The scaling study and the sigmoid loss through the plan, as `make scaling` and `make sweep` run them: scaling.yaml
and sweep.yaml plan what the study needs, and a tiny study regenerates its page section and its Markdown table."""

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from vl_lab.runner import plan_runs, read_plan
from vl_lab.synthetic import synth, synth_config


def planned(path):
    plan = read_plan(ROOT / path)
    corpora = {k: ROOT / 'data' / 'absent' for k in ('raw', 'clean', 'consistent')}
    return plan_runs(plan, corpora, Path('/tmp/unused'), hash_data=False)


def overrides(run) -> dict:
    return dict(o.split('=', 1) for o in run.params.get('overrides', []))


def test_scaling_plan_holds_nested_shares_of_every_model_two_seeds_each():
    runs = planned('scaling.yaml')
    by_model = {}
    for r in runs:
        model, share = r.name.split('@')
        assert float(Fraction(share)) == float(overrides(r)['train_fraction']), r.name
        assert overrides(r)['epochs'] == '6' and overrides(r)['patience'] == '0'
        by_model.setdefault(model, {}).setdefault(share, []).append(r.seed)
    assert set(by_model) >= {'w0.25', 'w0.5', 'w1', 'w1-deep', 'vit'}
    for m in ('w0.25', 'w0.5', 'w1', 'w1-deep'):  # the ladder and the deeper tower: 1/16 to 1
        assert set(by_model[m]) == {'1/16', '1/8', '1/4', '1/2', '1'}, m
    assert all(sorted(seeds) == [0, 1] for shares in by_model.values() for seeds in shares.values())
    assert len({r.params['eval_data'] for r in runs}) == 1  # one test split for all


def test_sweep_compares_the_losses_at_three_batch_sizes():
    pairs = {}
    for r in planned('sweep.yaml'):
        o = overrides(r)
        if set(o) <= {'loss', 'batch_size'}:
            pairs.setdefault((o.get('loss', 'infonce'), int(o.get('batch_size', 32))), []).append(r.seed)
    for loss in ('infonce', 'siglip'):
        for batch in (16, 32, 64):
            assert sorted(pairs[(loss, batch)]) == [0, 1], (loss, batch)


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp('study')
    synth(d / 'shapes', synth_config('none', n_images=240, seed=3), progress=False)
    nb = str(ROOT / 'nbs' / 'experiments' / 'train_eval.ipynb')
    tiny = ['epochs=2', 'batch_size=16', 'patience=0']
    experiments = [
        dict(
            name=f'{m}@{s}',
            notebook=nb,
            seeds=[0],
            params=dict(data='raw', eval_data='raw', overrides=[*o, *tiny, f'train_fraction={float(Fraction(s))}']),
        )
        for m, o in (('w0.5', ['model.conv_channels=4,8,8,16', 'model.text_width=16']), ('w1', []))
        for s in ('1/4', '1/2', '1')
    ]
    experiments += [
        dict(name=n, notebook=nb, seeds=[0, 1], params=dict(data='raw', eval_data='raw', overrides=[*tiny, *o]))
        for n, o in (('infonce', []), ('siglip', ['loss=siglip']))
    ]
    plan = dict(corpus=str(d / 'shapes'), preset='cpu-micro', experiments=experiments)
    (d / 'plan.yaml').write_text(yaml.safe_dump(plan))
    r = run_cli('report', '--plan', d / 'plan.yaml', '--out', d / 'out', '--table', d / 'STUDY.md', '--jobs', 2, cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_runs_train_on_nested_shares_and_record_their_compute(study):
    index = json.loads((study / 'out' / 'runs' / 'index.json').read_text())
    metrics = {
        (r['name'], r['seed']): json.loads((study / 'out' / 'runs' / r['run_id'] / 'metrics.json').read_text())
        for r in index['runs']
    }
    images = [metrics[(f'w1@{s}', 0)]['train']['data']['train_images'] for s in ('1/4', '1/2', '1')]
    assert images[0] < images[1] < images[2], images
    assert abs(images[0] - images[2] / 4) <= 1 and abs(images[1] - images[2] / 2) <= 1, images
    for m in metrics.values():
        c = m['train']['compute']
        assert c['train_flops'] == c['step_flops'] * m['train']['steps'] > 0
        assert m['eval']['retrieval']['contrastive_loss'] > 0
    narrow, wide = metrics[('w0.5@1', 0)]['train']['compute'], metrics[('w1@1', 0)]['train']['compute']
    assert narrow['params'] < wide['params'] and narrow['step_flops'] < wide['step_flops']


def test_the_page_and_the_table_state_the_fits_and_the_loss_verdicts(study):
    page = (study / 'out' / 'index.html').read_text()
    assert 'Scaling with data and model size' in page and 'The sigmoid loss against InfoNCE' in page
    md = (study / 'STUDY.md').read_text()
    assert '## Scaling with data and model size' in md and '## The sigmoid loss against InfoNCE' in md
    fits = r'^- (w[\d.]+): test error (?:falls|does not fall: it grows) as \(pairs seen\)\^([+-][\d.]+), 95% interval'
    exps = re.findall(fits, md, re.M)
    assert {m for m, _ in exps} == {'w0.5', 'w1'}, md
    assert re.search(r'The test split allows at most R@1 0\.\d{3}', md), md  # the corpus's ceiling, measured
    assert re.search(r'^- batch 16: \w+ t2i R@1, sigmoid - InfoNCE [+-]\d\.\d{3} ± \d\.\d{3} \(SE\)', md, re.M), md
