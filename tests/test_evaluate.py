"""`vl-lab evaluate` on a run with every head, and `vl-lab caption-metrics`: numbers, chance levels, bad input."""

import json

import pytest

from conftest import one_line_error, run_cli
from vl_lab.synthetic import synth, synth_config

SMALL = ['--set', 'warmup_steps=5', '--set', 'lr=5e-4']  # on top of the cpu-small preset


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp('eval')
    synth(d / 'shapes', synth_config('none', n_images=200, seed=5), progress=False)
    run_cli(
        'train',
        'cpu-small',
        '--data',
        d / 'shapes',
        '--out',
        d / 'run',
        '--quiet',
        '--set',
        'epochs=2',
        '--set',
        'model.tasks=contrastive,itm,caption,vqa',
        *SMALL,
        check=True,
    )
    return d


def test_evaluate_every_task(run):
    r = run_cli('evaluate', run / 'run', '--split', 'test', '--beams', 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'chance' in r.stdout and 't2i R@1' in r.stdout
    m = json.loads((run / 'run' / 'eval' / 'test' / 'metrics.json').read_text())
    assert set(m) >= {'retrieval', 'zero_shot', 'itm', 'captioning', 'vqa'}
    n = m['images']
    assert m['retrieval']['chance_t2i_R@1'] == pytest.approx(1 / n)
    for k in ('t2i_R@1', 't2i_R@5', 't2i_R@10', 'i2t_R@1', 't2i_MRR', 't2i_NDCG@10', 'i2t_median_rank'):
        assert k in m['retrieval']
    assert m['retrieval']['t2i_R@10'] >= m['retrieval']['t2i_R@5'] >= m['retrieval']['t2i_R@1']
    # zero-shot: the shape and colour of lone objects, the number of objects; each against its majority class
    assert set(m['zero_shot']) == {'shape', 'colour', 'count'}
    ann = json.loads((run / 'shapes' / 'annotations.json').read_text())
    singles = sum(i['split'] == 'test' and i['n_objects'] == 1 for i in ann['images'])
    assert (
        m['zero_shot']['shape']['n'] == m['zero_shot']['colour']['n'] == singles and m['zero_shot']['count']['n'] == n
    )
    for z in m['zero_shot'].values():
        assert len(z['confusion']) == len(z['classes']) and sum(map(sum, z['confusion'])) == z['n']
        assert z['chance_accuracy'] >= 1 / len(z['classes'])
        # the linear probe: fitted on the run's training images (each with a label), scored on the same test images
        assert 0 <= z['probe_accuracy'] <= 1 and z['probe_images'] > 0
    train_singles = sum(i['split'] == 'train' and i['n_objects'] == 1 for i in ann['images'])
    assert m['zero_shot']['shape']['probe_images'] == train_singles
    assert m['itm']['n'] == 2 * n and m['itm']['chance_accuracy'] == 0.5 and 0 <= m['itm']['auc'] <= 1
    assert {'Bleu_1', 'Bleu_4', 'METEOR', 'ROUGE_L', 'CIDEr'} <= set(m['captioning'])
    assert 0 <= m['vqa']['overall'] <= 1 and m['vqa']['questions'] > n
    # the language prior, computed from the training split, answers 'How many shapes' with one fixed answer
    assert 0 < m['vqa']['question_only_accuracy'] < 1 and 'question only' in r.stdout
    ex = json.loads((run / 'run' / 'eval' / 'test' / 'examples.json').read_text())
    assert (
        len(ex['top5'][0]['top5']) == 5
        and ex['hardest_t2i'][0]['rank'] >= ex['hardest_t2i'][-1]['rank']
        and ex['captions']
    )
    assert all(len(e['top5']) == 5 and (e['rank'] == 1) == (e['top5'][0] == e['image']) for e in ex['t2i_top5'])
    assert {'question', 'predicted', 'answer'} <= set(ex['vqa'][0])


def test_evaluate_bad_input(run, tmp_path):
    assert 'not a run folder' in one_line_error(run_cli('evaluate', tmp_path))
    assert "no records in split 'nope'" in one_line_error(run_cli('evaluate', run / 'run', '--split', 'nope'))


def test_caption_metrics_cli(run, tmp_path):
    ann = json.loads((run / 'shapes' / 'annotations.json').read_text())
    first = {}
    for a in ann['annotations']:
        first.setdefault(a['image_id'], a['caption'])
    hyps = [{'image_id': i, 'caption': c} for i, c in first.items()]
    (tmp_path / 'hyps.json').write_text(json.dumps(hyps))
    r = run_cli('caption-metrics', run / 'shapes' / 'annotations.json', tmp_path / 'hyps.json')
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert set(m) == {'Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'METEOR', 'ROUGE_L', 'CIDEr'} and m['Bleu_1'] > 0.9
    (tmp_path / 'bad.json').write_text(json.dumps(hyps[:-3] + [{'image_id': 999999, 'caption': 'a red circle'}]))
    assert '999999' in one_line_error(
        run_cli('caption-metrics', run / 'shapes' / 'annotations.json', tmp_path / 'bad.json')
    )


def test_export_and_serve_cli(run, tmp_path):
    r = run_cli('export', run / 'run', '--onnx', '--int8')
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ('image.onnx', 'text.onnx', 'image.int8.onnx', 'text.int8.onnx', 'image.int8-static.onnx'):
        assert (run / 'run' / 'export' / f).stat().st_size > 0
    assert (
        'max |torch - onnx|' in r.stdout
        and 'image.int8-static.onnx (static, calibrated on 256 validation images)' in r.stdout
    )
    assert 'not a run folder' in one_line_error(run_cli('serve', tmp_path))
    assert 'not a run folder' in one_line_error(run_cli('export', tmp_path, '--onnx'))
