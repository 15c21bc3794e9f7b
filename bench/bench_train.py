"""Benchmark: the vl_lab training loop against a plain hand-written loop over the same modules and data, in one run.

Both train the `cpu-tiny` dual encoder on the same batches (a 1,200-image shapes corpus made in a temporary folder)
for the same number of optimizer steps. The vl_lab figure is its own timing of its step loops (provenance.json:
train_loop_s; evaluation and checkpoints excluded, as the plain loop has none). Prints pairs/s of each and their
ratio (aim: >= 0.95), then the achieved FLOP/s of the vl_lab loop (FLOPs of one step counted by torch's
FlopCounterMode) against this machine's fp32 matmul rate, measured here too.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vl_lab.core import seed_everything
from vl_lab.data import load_records
from vl_lab.dataset import EpochBatches, PairDataset, make_collate
from vl_lab.losses import compute_losses
from vl_lab.models import VLModel
from vl_lab.synthetic import synth, synth_config
from vl_lab.tokenizer import train_word_tokenizer
from vl_lab.run import resolve_config, split_records
from vl_lab.train import param_groups, train, warmup_cosine

EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 3


def matmul_rate(n=1024, reps=20):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


with tempfile.TemporaryDirectory() as d:
    synth(Path(d) / 'shapes', synth_config('none', n_images=1200), progress=False)
    cfg = resolve_config('cpu-tiny', {'epochs': EPOCHS, 'patience': 0}, data=Path(d) / 'shapes')
    # the vl_lab loop
    train(cfg, Path(d) / 'run', progress=False)
    prov = json.loads((Path(d) / 'run' / 'provenance.json').read_text())
    steps, lab_s = prov['steps_timed'], prov['train_loop_s']
    # the plain loop: same data, modules, optimizer groups and schedule; no accelerate, checks, history or progress bar
    seed_everything(cfg.seed)
    recs = split_records(list(load_records(cfg.data)), 'train')
    tok = train_word_tokenizer([c for r in recs for c in r.captions], cfg.vocab_size)
    ds = PairDataset(recs, cfg.transform, True, cfg.seed)
    model = VLModel(cfg.model, vocab_size=len(tok))
    opt = torch.optim.AdamW(param_groups(model, cfg, cfg.lr, ''), lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-6)
    sampler = EpochBatches(len(ds), cfg.batch_size, cfg.seed)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, EPOCHS * len(sampler)))
    collate, plain_s, plain_steps = make_collate(tok, cfg.model.max_len), 0.0, 0
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
        model.train()
        t = time.perf_counter()
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss, _ = compute_losses(model(batch), {})
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            plain_steps += 1
        plain_s += time.perf_counter() - t
    # FLOPs of one training step (forward + backward) on one batch
    batch = collate([ds[(0, i)] for i in range(cfg.batch_size)])
    with FlopCounterMode(display=False) as fc:
        loss, _ = compute_losses(model(batch), {})
        loss.backward()
    step_flops = fc.get_total_flops()

assert steps == plain_steps, (steps, plain_steps)
lab_rate, plain_rate = steps * cfg.batch_size / lab_s, plain_steps * cfg.batch_size / plain_s
peak = matmul_rate()
print(
    f'cpu-tiny dual encoder, batch {cfg.batch_size}, {steps} optimizer steps each '
    f'({EPOCHS} epochs of {len(ds)} images):'
)
print(f'  vl_lab loop : {lab_rate:7.1f} pairs/s  ({lab_s:.1f} s)')
print(f'  plain loop  : {plain_rate:7.1f} pairs/s  ({plain_s:.1f} s)')
print(f'  ratio vl_lab / plain: {lab_rate / plain_rate:.3f} (aim: >= 0.95)')
achieved = step_flops * steps / lab_s
print(
    f'  FLOPs per step {step_flops / 1e9:.2f} G; achieved {achieved / 1e9:.1f} GFLOP/s; '
    f'fp32 matmul here {peak / 1e9:.1f} GFLOP/s; ratio {achieved / peak:.3f}'
)
