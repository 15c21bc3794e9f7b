import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VL_LAB = str(Path(sys.executable).parent / 'vl-lab')


def run_cli(*args, cwd=None, check=False):
    "Run the installed `vl-lab` console script; returns the CompletedProcess."
    r = subprocess.run(
        [VL_LAB, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg'},
    )
    if check and r.returncode:
        raise AssertionError(f'vl-lab {args} failed ({r.returncode}): {r.stderr[-2000:]}')
    return r


def one_line_error(r):
    "Assert that a CLI run failed with exactly one line on stderr and no traceback; return that line."
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'error' in lines[0], r.stderr
    return lines[0]


@pytest.fixture(scope='session')
def heavy_corpus(tmp_path_factory):
    "A 1,500-image corpus with the heavy noise preset (enough to measure each noise rate)."
    out = tmp_path_factory.mktemp('heavy') / 'corpus'
    run_cli('synth', out, '--n-images', 1500, '--seed', 11, '--noise', 'heavy', '--quiet', check=True)
    return out


def png_of_size(w, h, depth=1):
    """A valid greyscale PNG of w x h blank pixels, `depth` bits each (1, or 16: PIL decodes it as mode I;16), written
    row by row (a few KB on disk, huge when decoded)."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xFFFFFFFF)

    z, row, parts = zlib.compressobj(9), b'\x00' * (1 + (w * depth + 7) // 8), []
    for _ in range(h):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, 0, 0, 0, 0))
        + chunk(b'IDAT', b''.join(parts))
        + chunk(b'IEND', b'')
    )


def scene_image(seed):
    "A drawn shapes scene (PIL RGB) and two of its true captions."
    import numpy as np
    from vl_lab.scenes import make_scene, render_scene, scene_captions

    s = make_scene(np.random.default_rng(seed))
    return render_scene(s), scene_captions(s, np.random.default_rng(seed), 2)
