"""The contrastive losses under DDP (gloo, 2 processes on the CPU) equal one process on the gathered batch: the loss
and every parameter's gradient after DDP's averaging, for SigLIP's sigmoid loss and for InfoNCE."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vl_lab.losses import contrastive_loss, siglip_loss

N, WORLD = 8, 2


class Towers(nn.Module):
    """Two linear towers, the loss's scale and, for SigLIP, its bias: what DDP averages (a parameter no loss uses would
    hold back DDP's all-reduce, as the lab's models are built with only the parameters their loss uses)."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(16, 6)
        self.text = nn.Linear(12, 6)
        self.logit_scale = nn.Parameter(torch.tensor(10.0).log())
        if kind == 'siglip':
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, x, y, extra):
        return self.image(x), self.text(y), self.text(extra)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 16, generator=g), torch.randn(N, 12, generator=g), torch.randn(N, 2, 12, generator=g)


def loss_of(kind: str, towers, x, y, extra):
    img, txt, more = towers(x, y, extra)
    core = getattr(towers, 'module', towers)
    if kind == 'siglip':
        return siglip_loss(img, txt, core.logit_scale.exp(), core.logit_bias, extra_text_emb=more)['contrastive']
    return contrastive_loss(img, txt, core.logit_scale.exp(), extra_text_emb=more)['contrastive']


def one_process(kind: str):
    towers = Towers(kind)
    loss = loss_of(kind, towers, *data())
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in towers.named_parameters()}


def worker(rank: int, port: int, kind: str, out: str):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD)
    try:
        towers = nn.parallel.DistributedDataParallel(Towers(kind))
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)  # this process's share of the global batch
        loss = loss_of(kind, towers, *(t[rows] for t in data()))
        loss.backward()
        grads = {k.removeprefix('module.'): p.grad.clone() for k, p in towers.named_parameters()}
        torch.save(dict(loss=loss.item(), grads=grads), f'{out}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('kind', ['siglip', 'infonce'])
def test_two_processes_equal_one_on_the_gathered_batch(kind, tmp_path):
    mp.start_processes(worker, args=(free_port(), kind, str(tmp_path)), nprocs=WORLD, start_method='spawn')
    loss, grads = one_process(kind)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f'rank{rank}.pt')
        assert abs(got['loss'] - loss) < 1e-6, (rank, got['loss'], loss)
        assert set(got['grads']) == set(grads)
        for k, g in grads.items():
            assert torch.allclose(got['grads'][k], g, atol=1e-6, rtol=1e-5), (rank, k, got['grads'][k], g)


def test_a_process_alone_sees_only_its_share():
    "Without the gather (one process's half of the batch), the SigLIP loss differs: the test above can fail."
    towers = Towers('siglip')
    x, y, extra = data()
    img, txt, more = towers(x[: N // 2], y[: N // 2], extra[: N // 2])
    half = siglip_loss(img, txt, towers.logit_scale.exp(), towers.logit_bias, extra_text_emb=more)['contrastive']
    assert abs(half.item() - one_process('siglip')[0]) > 1e-3
