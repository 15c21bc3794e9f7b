"""Transforms and tokenizers on the shapes scenes: flips keep (image, caption) pairs true, augmentation is seeded."""

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # before transformers is first imported: no network in tests

import re

import numpy as np
import pytest
import torch

from vl_lab.scenes import COLORS, SHAPE_WORDS, make_scene, render_scene, scene_captions
from vl_lab.tokenizer import load_tokenizer, save_tokenizer, train_word_tokenizer
from vl_lab.transforms import PairTransform, TransformConfig, flip_caption, pair_rng, to_pil

SHAPE_RE = '|'.join(w for ws in SHAPE_WORDS.values() for w in ws)


def two_object_horizontal_scenes(n):
    out, seed = [], 0
    while len(out) < n:
        s = make_scene(np.random.default_rng(seed))
        if len(s['objects']) == 2 and s['axis'] == 'h':
            out.append((seed, s))
        seed += 1
    return out


def mentions(cap):
    "(colour, shape word) of each object named in `cap`, in order."
    return [(m.group(1), m.group(2)) for m in re.finditer(rf"\b({'|'.join(COLORS)}) ({SHAPE_RE})\b", cap.lower())]


@pytest.mark.parametrize('seed,scene', two_object_horizontal_scenes(12))
def test_flipped_pair_stays_true(seed, scene):
    size = 224
    tr = PairTransform(TransformConfig(size=size, hflip_p=1.0), train=True)
    img = render_scene(scene)
    W, H = scene['width'], scene['height']
    s = size / min(W, H)  # the resize + center crop map x to x * s - (W * s - size) / 2
    pos = {}
    for o in scene['objects']:
        x = o['cx'] * s - (W * s - size) / 2
        y = o['cy'] * s - (H * s - size) / 2
        pos[o['color']] = (size - 1 - x, y)  # mirrored
    checked = 0
    for cap in scene_captions(scene, np.random.default_rng(seed)):
        x, flipped = tr(img, cap, pair_rng(seed, 0, 0))
        assert flipped == flip_caption(cap)
        out = np.asarray(to_pil(x)).astype(int)
        for o in scene['objects']:  # the mirrored centre of each object has that object's colour
            mx, my = pos[o['color']]
            px = out[int(round(my)), int(round(mx))]
            assert np.abs(px - np.array(o['rgb'])).max() <= 12, (o, px)
        m = mentions(flipped)
        for word, sign in (('left of', -1), ('right of', 1)):
            if re.search(rf"\b{word}\b", flipped.lower()) and len(m) == 2 and ' and ' not in flipped:
                first, second = pos[m[0][0]][0], pos[m[1][0]][0]
                assert sign * (first - second) > 0, (cap, flipped, pos)
                checked += 1
    assert checked >= 1  # every such scene has captions with 'left of' / 'right of' between its two objects


def test_same_rng_same_pair_across_configs():
    scene = make_scene(np.random.default_rng(3))
    img, cap = render_scene(scene), scene_captions(scene, np.random.default_rng(3), 1)[0]
    cfg = TransformConfig(size=112, random_resized_crop=True, hflip_p=0.5, color_jitter=True, synonym_p=0.5)
    tr = PairTransform(cfg, train=True)
    a, b = tr(img, cap, pair_rng(1, 2, 3)), tr(img, cap, pair_rng(1, 2, 3))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    c = tr(img, cap, pair_rng(1, 3, 3))
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(0)
    np.random.seed(0)  # the global RNGs play no part
    d = tr(img, cap, pair_rng(1, 2, 3))
    assert torch.equal(a[0], d[0]) and a[1] == d[1]


def test_word_tokenizer_on_flipped_captions_round_trips(tmp_path):
    caps = [
        c for s in range(100) for c in scene_captions(make_scene(np.random.default_rng(s)), np.random.default_rng(s))
    ]
    tok = train_word_tokenizer(caps)
    back = load_tokenizer(save_tokenizer(tok, tmp_path / 'tok'))
    flipped = [flip_caption(c) for c in caps]
    for c in flipped[:100]:
        ids = back(c)['input_ids']
        assert ids == tok(c)['input_ids'] and tok.unk_token_id not in ids  # left and right are both in the vocabulary
    enc = back(flipped[:8], padding='max_length', max_length=24, truncation=True, return_tensors='pt')
    assert enc['input_ids'].shape == (8, 24)
