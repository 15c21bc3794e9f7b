"""A researcher's own corpus: the plan runs on the layouts people download, fitted to what each corpus holds."""

import json
import re
import shutil

import pytest
import yaml

from conftest import ROOT, one_line_error, run_cli
from layouts import LAYOUTS, write_layouts, write_zero_shot_folder
from vl_lab.synthetic import synth, synth_config

NB = str(ROOT / 'nbs' / 'experiments' / 'train_eval.ipynb')
MICRO = ['epochs=2']  # on top of cpu-micro


def plan(tmp_path, experiments, **extra):
    p = tmp_path / f'plan-{len(list(tmp_path.glob("plan-*")))}.yaml'
    p.write_text(yaml.safe_dump(dict(preset='cpu-micro', timeout=600, experiments=experiments, **extra)))
    return p


def fusion_and_dual(tmp_path, zero_shot=None):
    "The fusion experiment (ITM, captioning, VQA) and one dual encoder, as the default plan has them, tiny."
    exps = [
        dict(
            name='fusion',
            notebook=NB,
            seeds=[0],
            params=dict(data='clean', overrides=MICRO + ['model.tasks=contrastive,itm,caption,vqa']),
        ),
        dict(name='dual', notebook=NB, seeds=[0], params=dict(data='clean', overrides=MICRO)),
    ]
    return plan(tmp_path, exps, **({'zero_shot': str(zero_shot)} if zero_shot else {}))


@pytest.fixture(scope='module')
def downloads(tmp_path_factory):
    "A 150-image shapes corpus (seed 31) rewritten into every layout, and a labelled zero-shot folder of it."
    root = tmp_path_factory.mktemp('own')
    synth(root / 'src', synth_config('default', n_images=150, seed=31), progress=False)
    paths = write_layouts(root / 'src', root / 'downloads')
    return root, paths, write_zero_shot_folder(root / 'src', root / 'zero-shot')


def snapshot(folder):
    "Every file under `folder` with its size and modification time."
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*'))


@pytest.mark.parametrize('layout', LAYOUTS)
def test_the_plan_runs_on_each_layout_as_downloaded(downloads, tmp_path, layout):
    "Detected, brought in once under the data root, fitted: fusion trains ITM and captioning without VQA; no run fails."
    root, paths, zs = downloads
    before, beside = snapshot(paths[layout]), sorted(p.name for p in paths[layout].parent.iterdir())
    p = fusion_and_dual(tmp_path, zs if layout == 'coco2017' else None)
    out, data = tmp_path / 'reports', tmp_path / 'data'
    r = run_cli(
        'report', '--plan', p, '--data', paths[layout], '--out', out, '--data-root', data, '--jobs', 2, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads((out / 'runs' / 'index.json').read_text())['runs']
    assert [x['status'] for x in runs] == ['done', 'done'], runs
    fusion = json.loads((out / 'runs' / runs[0]['run_id'] / 'metrics.json').read_text())['eval']
    assert {'itm', 'captioning', 'retrieval'} <= set(fusion) and 'vqa' not in fusion, sorted(fusion)
    assert any(n.startswith('VQA:') for n in runs[0]['not_measured']), runs[0]
    html = (out / 'index.html').read_text()
    assert 'Not measured on this corpus' in html and 'holds no questions' in html
    fmt = {'coco2017': 'coco', 'tsv': 'csv'}.get(layout, layout)
    assert f'(format <b>{fmt}</b>)' in html and 'Splits: ' in html
    assert 'precision or recall can be measured here' in html  # no noise labels: said, not guessed
    assert 'the same plan on real data' not in html
    # the input is untouched and nothing was written beside it; derived corpora are under the data root
    assert snapshot(paths[layout]) == before
    assert sorted(p.name for p in paths[layout].parent.iterdir()) == beside
    assert len(list((data / 'corpora').iterdir())) == 1
    if layout == 'coco2017':  # COCO's own splits: its train file is train, its val file split into val and test
        assert 'the corpus&#39;s train; its val split into val and test' in html
        dual = json.loads((out / 'runs' / runs[1]['run_id'] / 'metrics.json').read_text())['eval']
        z = dual['zero_shot']['zero-shot']
        assert z['images'] >= 2 and 0 <= z['accuracy'] <= 1 and 0 < z['chance_accuracy'] < 1, z
        assert 'probe_accuracy' in z
        assert re.search(r'zero-shot', html)


def test_a_corpus_without_what_the_plan_needs_is_one_line_before_any_run(downloads, tmp_path):
    "No test images, or no task the corpus supports in any experiment: one line naming the experiment, no cleaning."
    root, paths, _ = downloads
    kp = tmp_path / 'karpathy'
    shutil.copytree(paths['karpathy'], kp)
    d = json.loads((kp / 'dataset_flickr30k.json').read_text())
    for im in d['images']:
        if im['split'] == 'test':
            (kp / 'flickr30k-images' / im['filename']).unlink()
    (kp / 'dataset_flickr30k.json').write_text(json.dumps(d))
    args = ['--out', tmp_path / 'reports', '--data-root', tmp_path / 'data']
    r = run_cli('report', '--plan', fusion_and_dual(tmp_path), '--data', kp, *args, cwd=tmp_path)
    line = one_line_error(r)
    assert "experiment fusion: " in line and "0 'test' images" in line, line
    assert not list((tmp_path / 'data' / 'corpora').glob('*/*-clean')) and not (tmp_path / 'reports').exists()
    vqa = [dict(name='vqa-only', notebook=NB, params=dict(data='clean', overrides=MICRO + ['model.tasks=vqa']))]
    r = run_cli('report', '--plan', plan(tmp_path, vqa), '--data', paths['tsv'], *args, cwd=tmp_path)
    line = one_line_error(r)
    assert 'no experiment of the plan can run on this corpus: vqa-only: no task of it can be measured' in line, line
    assert 'VQA: ' in line


def test_a_corpus_whose_images_are_all_missing_is_an_error_not_an_empty_corpus(downloads, tmp_path):
    root, paths, _ = downloads
    coco = tmp_path / 'coco'
    shutil.copytree(paths['coco2017'], coco, ignore=shutil.ignore_patterns('*2017'))
    line = one_line_error(
        run_cli('clean', coco / 'annotations' / 'captions_train2017.json', tmp_path / 'out', '--quiet')
    )
    assert 'no usable pair' in line and 'missing_file' in line and '--image-root' in line, line
    rows = (tmp_path / 'out' / 'manifest.jsonl').read_text().splitlines()
    anns = json.loads((coco / 'annotations' / 'captions_train2017.json').read_text())['annotations']
    assert len(rows) == len(anns) > 0  # every pair accounted for
