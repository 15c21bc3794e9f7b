"""Benchmark: the vl_lab training loop against a plain hand-written loop over the same modules and batches, in one run.

Both train the `cpu-tiny` dual encoder on a 1,200-image shapes corpus made in a temporary folder, on the same batches
(the preset's captions per image and text-neighbour batches, the same collate), for the same number of optimizer
steps. The vl_lab figure is its own timing of its step loops (provenance.json: train_loop_s; evaluation and
checkpoints excluded, as the plain loop has none; its tracker on, as a plan's runs have it). The two loops alternate,
`--repeats` times each (lab first, then plain first, ...), so a drift of the machine reaches both: the ratio printed is
the median of the repeats' ratios, with their spread (min-max).

Then the step itself: the achieved FLOP/s of the vl_lab loop (FLOPs of one step counted by torch's FlopCounterMode:
convolutions and matmuls) against this machine's fp32 matmul rate, measured here too; where a step's time goes
(torch.profiler over a few steps of the plain loop, by operator); and each option measured on the same batches, kept
or not (memory format of the convolutions, bf16 autocast where the CPU has native bf16, torch.compile).

    python bench/bench_train.py [EPOCHS] [--repeats N]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vl_lab.core import seed_everything
from vl_lab.data import load_records
from vl_lab.dataset import EpochBatches, PairDataset, caption_vectors, make_collate
from vl_lab.losses import compute_losses
from vl_lab.models import VLModel
from vl_lab.run import resolve_config, split_records
from vl_lab.synthetic import synth, synth_config
from vl_lab.tokenizer import train_word_tokenizer
from vl_lab.train import param_groups, step_flops, train, warmup_cosine

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('epochs', nargs='?', type=int, default=3, help='epochs of each loop in each repeat')
ap.add_argument('--repeats', type=int, default=3, help='times each loop runs, alternating')
ap.add_argument('--images', type=int, default=1200, help='images in the corpus')
ap.add_argument('--track', default='tensorboard', help="the vl_lab run's trackers (none: no tracker)")
ap.add_argument('--no-options', action='store_true', help='only the two loops: no profile, no options')
args = ap.parse_args()


def matmul_rate(n=1024, reps=20):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


class Plain:
    "The plain loop: the same data, modules, optimizer groups and schedule; no accelerate, checks, history or tracker."

    def __init__(self, cfg):
        self.cfg = cfg
        seed_everything(cfg.seed)
        recs = split_records(list(load_records(cfg.data)), 'train')
        self.tok = train_word_tokenizer([c for r in recs for c in r.captions], cfg.vocab_size)
        self.ds = PairDataset(recs, cfg.transform, True, cfg.seed, captions_per_item=cfg.captions_per_image)
        vectors = caption_vectors(self.ds.records) if cfg.batch_groups > 1 else None
        self.sampler = EpochBatches(len(self.ds), cfg.batch_size, cfg.seed, vectors=vectors, group=cfg.batch_groups)
        self.collate = make_collate(self.tok, cfg.model.max_len)

    def model(self):
        "A fresh model and optimizer (each repeat starts from the same weights, as each vl_lab run does)."
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = VLModel(cfg.model, vocab_size=len(self.tok))
        opt = torch.optim.AdamW(param_groups(model, cfg, cfg.lr, ''), lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-6)
        return model, opt

    def batches(self, epoch):
        self.sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(self.ds, batch_sampler=self.sampler, collate_fn=self.collate)

    def step(self, model, opt, sched, batch, autocast=False):
        opt.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss, _ = compute_losses(model(batch), {})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()

    def run(self, epochs):
        "(seconds in the step loops, steps) of `epochs` epochs, loading included, as vl_lab times its loop."
        model, opt = self.model()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.cfg.warmup_steps, epochs * len(self.sampler)))
        model.train()
        seconds, steps = 0.0, 0
        for epoch in range(epochs):
            t = time.perf_counter()
            for batch in self.batches(epoch):
                self.step(model, opt, sched, batch)
                steps += 1
            seconds += time.perf_counter() - t
        return seconds, steps


def lab_run(cfg, d: Path, k: int):
    "(seconds in the step loops, steps) of one vl_lab run: its own timing, from provenance.json."
    out = d / f'run{k}'
    train(cfg, out, progress=False, track=args.track)
    prov = json.loads((out / 'provenance.json').read_text())
    return prov['train_loop_s'], prov['steps_timed']


def option_rates(plain: Plain, steps: int = 12) -> dict:
    """Seconds per step of the plain loop's compute on pre-made batches (loading excluded), for each option: the
    convolutions' memory format (the model's channels-last, or NCHW), bf16 autocast, torch.compile."""
    batches = [b for _, b in zip(range(steps + 3), plain.batches(0))]
    out = {}

    def timed(name, model, opt, autocast=False):
        model.train()
        for b in batches[:3]:  # warm-up (and compilation)
            plain.step(model, opt, None, b, autocast)
        t = time.perf_counter()
        for b in batches[3:]:
            plain.step(model, opt, None, b, autocast)
        out[name] = (time.perf_counter() - t) / steps

    model, opt = plain.model()
    timed('channels-last convolutions (the model as built)', model, opt)
    model, opt = plain.model()
    model.image_tower.body.to(memory_format=torch.contiguous_format)
    tower_forward = model.image_tower.forward
    model.image_tower.forward = lambda px: tower_forward(px.contiguous())
    timed('NCHW convolutions', model, opt)
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        model, opt = plain.model()
        timed('bf16 autocast (native bf16 here)', model, opt, autocast=True)
    else:
        out['bf16 autocast'] = None  # no native bf16: emulated, slower
    model, opt = plain.model()
    try:
        t = time.perf_counter()
        compiled = torch.compile(model)
        timed('torch.compile (inductor)', compiled, opt)
        out['torch.compile: compile and warm-up s'] = time.perf_counter() - t - out['torch.compile (inductor)'] * steps
    except Exception as e:  # no C compiler, or an op inductor cannot lower
        out[f'torch.compile failed: {type(e).__name__}'] = None
    return out


def profile(plain: Plain, steps: int = 8):
    "The self CPU time of the step's operators over `steps` steps of the plain loop (loading excluded)."
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    model, opt = plain.model()
    model.train()
    batches = [b for _, b in zip(range(steps + 2), plain.batches(0))]
    for b in batches[:2]:
        plain.step(model, opt, None, b)
    with prof(activities=[ProfilerActivity.CPU]) as p:
        for b in batches[2:]:
            plain.step(model, opt, None, b)
    rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    return [(e.key, e.self_cpu_time_total / total) for e in rows[:12]]


with tempfile.TemporaryDirectory() as tmp:
    d = Path(tmp)
    synth(d / 'shapes', synth_config('none', n_images=args.images), progress=False)
    cfg = resolve_config('cpu-tiny', {'epochs': args.epochs, 'patience': 0}, data=d / 'shapes')
    plain = Plain(cfg)
    ratios, lab_rates, plain_rates = [], [], []
    for k in range(args.repeats):
        first_lab = k % 2 == 0
        timings = {}
        for who in ('lab', 'plain') if first_lab else ('plain', 'lab'):
            timings[who] = lab_run(cfg, d, k) if who == 'lab' else plain.run(args.epochs)
        (lab_s, lab_steps), (plain_s, plain_steps) = timings['lab'], timings['plain']
        assert lab_steps == plain_steps, (lab_steps, plain_steps)
        lab_rates.append(lab_steps * cfg.batch_size / lab_s)
        plain_rates.append(plain_steps * cfg.batch_size / plain_s)
        ratios.append(lab_rates[-1] / plain_rates[-1])
    steps = lab_steps
    # FLOPs of one training step (forward + backward) on one batch
    model, _ = plain.model()
    flops = step_flops(model, next(iter(plain.batches(0))))  # as each run's metrics.json counts them
    where = [] if args.no_options else profile(plain)
    options = {} if args.no_options else option_rates(plain)
    peak = matmul_rate()

print(
    f'cpu-tiny dual encoder, batch {cfg.batch_size} ({cfg.captions_per_image} captions an image, text-neighbour '
    f'batches), {steps} optimizer steps a loop ({args.epochs} epochs of {len(plain.ds)} images), '
    f'{args.repeats} repeats alternating:'
)
print(f'  vl_lab loop : {statistics.median(lab_rates):7.1f} pairs/s median ({min(lab_rates):.1f}-{max(lab_rates):.1f})')
print(
    f'  plain loop  : {statistics.median(plain_rates):7.1f} pairs/s median '
    f'({min(plain_rates):.1f}-{max(plain_rates):.1f})'
)
print(
    f'  ratio vl_lab / plain: {statistics.median(ratios):.3f} median of {len(ratios)} '
    f"(spread {min(ratios):.3f}-{max(ratios):.3f}; each: {', '.join(f'{r:.3f}' for r in ratios)}) (aim: >= 0.95)"
)
achieved = flops * statistics.median(lab_rates) / cfg.batch_size
print(
    f'  FLOPs per step {flops / 1e9:.2f} G; achieved {achieved / 1e9:.1f} GFLOP/s; '
    f'fp32 matmul here {peak / 1e9:.1f} GFLOP/s; ratio {achieved / peak:.3f} (aim: >= 0.5)'
)
print(f'  the vl_lab run logs to: {args.track}')
print('  where a step goes (self CPU time by operator, plain loop):' if where else '', end='\n' if where else '')
for name, share in where:
    print(f'    {share:6.1%}  {name}')
print(
    '  options, seconds per step on the same batches (loading excluded):' if options else '',
    end='\n' if options else '',
)
base = next(iter(options.values()), None)
for name, s in options.items():
    if s is None:
        print(f'    {name}: not measured')
    elif name.endswith(' s'):
        print(f'    {name}: {s:.1f} s')
    else:
        print(f'    {name}: {s * 1000:.1f} ms ({base / s:.2f}x the model as built)')
