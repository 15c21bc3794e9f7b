"""Benchmark: `retrieval_metrics` over 5,000 images x 25,000 captions (COCO 5k test size), chunked vs the full matrix.

Random normalised 256-d embeddings, 5 captions per image (each its image's embedding plus noise, so the ranks are not
all chance). Each variant runs in a fresh subprocess: the chunked metrics with the default chunk (1024) and with 256,
and a naive full-matrix version (the whole 5k x 25k score matrix at once, pessimistic ties like the library) that
also checks the R@1 figures. For each: seconds, and the peak RSS increase of the call (getrusage's ru_maxrss after the
call minus the RSS just before it; tracemalloc cannot see torch's allocations). Prints the size of the full score
matrix the chunked version never holds (5k x 25k x 4 bytes = 500 MB) and the largest score chunk it does hold.
"""

import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

N, PER, D = 5000, 5, 256
M = N * PER


def data():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    owner = torch.arange(N).repeat_interleave(PER)
    txt = F.normalize(img[owner] + 0.3 * torch.randn(M, D, generator=g), dim=-1)
    return img, txt, owner


def rss_now_kb():
    return int(next(line for line in open('/proc/self/status') if line.startswith('VmRSS')).split()[1])


@torch.no_grad()
def full_matrix(img, txt, owner):
    "The naive way: the whole N x M score matrix, then R@1 both ways (pessimistic ties)."
    S = img @ txt.T  # (N, M): 500 MB
    t2i = (S >= S[owner, torch.arange(M)][None]).sum(0)  # each caption's rank among the images
    own = torch.zeros(N, M, dtype=torch.bool)
    own[owner, torch.arange(M)] = True
    best = S.masked_fill(~own, -torch.inf).amax(1)
    i2t = (S.masked_fill_(own, -torch.inf) >= best[:, None]).sum(1) + 1
    return {'t2i_R@1': (t2i <= 1).double().mean().item(), 'i2t_R@1': (i2t <= 1).double().mean().item()}


def child(variant):
    from vl_lab.metrics import retrieval_metrics

    img, txt, owner = data()
    before = rss_now_kb()
    t = time.perf_counter()
    out = full_matrix(img, txt, owner) if variant == 'full' else retrieval_metrics(img, txt, owner, chunk=int(variant))
    sec = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    print(
        json.dumps(
            dict(
                seconds=sec,
                peak_increase_mb=(peak - before) / 1024,
                r1=[out['t2i_R@1'], out['i2t_R@1']],
                mrr=out.get('t2i_MRR'),
            )
        )
    )


def run(variant):
    r = subprocess.run([sys.executable, __file__, '--child', variant], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
    if sys.argv[1:2] == ['--child']:
        child(sys.argv[2])
        sys.exit()
    print(
        f'retrieval over {N:,} images x {M:,} captions ({PER} per image), {D}-d, CPU, {torch.get_num_threads()} threads'
    )
    print(f'  the full score matrix, never held by retrieval_metrics: {N * M * 4 / 1e6:.0f} MB')
    res = {v: run(v) for v in ('1024', '256', 'full')}
    for v, r in res.items():
        held = 'the whole matrix' if v == 'full' else f'largest score chunk {int(v) * max(N, M) * 4 / 1e6:.0f} MB'
        name = 'full matrix (naive)' if v == 'full' else f'chunk={v}'
        print(
            f'  {name:20s}: {r["seconds"]:6.2f} s, peak RSS increase {r["peak_increase_mb"]:6.0f} MB ({held}); '
            f't2i R@1 {r["r1"][0]:.4f}, i2t R@1 {r["r1"][1]:.4f}'
        )
    assert all(r['r1'] == res['full']['r1'] for r in res.values()), 'chunked and full-matrix R@1 disagree'
    c = res['1024']
    print(
        f'  default chunk vs full matrix: '
        f'{res["full"]["peak_increase_mb"] / c["peak_increase_mb"]:.1f}x less peak memory, '
        f'{c["seconds"] / res["full"]["seconds"]:.2f}x the time (it also computes MRR, NDCG@10, ranks for all k)'
    )
