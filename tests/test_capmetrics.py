"""vl_lab.capmetrics against pycocoevalcap on random corpora: identical PTB tokens, BLEU / ROUGE-L / CIDEr within
1e-9, METEOR equal; no file written into the pycocoevalcap package; one-line errors without Java or with bad input."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vl_lab.capmetrics import MeteorScorer, bleu, caption_metrics, cider_d, lcs_length, meteor, ptb_tokenize, rouge_l
from vl_lab.core import VLLabError

SEEDS = (0, 1, 2)
COMMON = (
    'a the man woman dog dogs cat riding on in of with red blue horse beach street is are two three small '
    'large sitting standing next to near field grass water people group playing ball table plate food'
).split()
ODD = [
    'café',
    'Naïve',
    'crème',
    'brûlée',
    'São',
    'ZÜRICH',
    'niño',
    '日本',
    'über',
    '😀',
    'Ελλάδα',
    'e\u0301te',
    "dog's",
    "can't",
    'well-known',
    '3.5',
    'U.S.',
    'e-mail',
    '(left)',
    '[top]',
    '{x}',
    '"quoted"',
    "'single'",
    'street.',
    'dog,',
    'what?',
    'yes!',
    'wait;',
    'note:',
    '--',
    '...',
    '-',
    '&',
    '%',
    '$5',
    '#1',
    '@home',
    '"',
    "'",
    '``',
    "''",
    'A.',
    'Mr.',
    'cannot',
    'gonna',
    '1/2',
    '10,000',
    'x|y',
    '|||',
]


def corpus(seed, n_images=60):
    "Random captions: a common and a random vocabulary (so n-grams repeat), unicode, punctuation, unbalanced quotes,"
    "one-word, empty and long captions, 1-7 references per image; hypotheses copied, perturbed or random."
    rng = np.random.default_rng(seed)
    letters = list('abcdefghijklmnopqrstuvwxyzéüñø')
    rand = [''.join(rng.choice(letters, rng.integers(1, 9))) for _ in range(40)]

    def caption(lo=1, hi=16):
        pool = [COMMON, rand, ODD][rng.choice(3, p=[0.6, 0.25, 0.15])]
        words = [
            str(w) for w in rng.choice(pool if rng.random() < 0.3 else COMMON + rand + ODD, rng.integers(lo, hi + 1))
        ]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        sep = ' ' if rng.random() < 0.9 else str(rng.choice(['  ', '\t', ' \u00a0 ']))
        return sep.join(words) + str(rng.choice(['', '', '.', ' .', '!', '?']))

    ids = list(range(100, 100 + n_images)) if seed % 2 == 0 else [f'img_{i:03d}' for i in range(n_images)]
    refs = {k: [caption(hi=60 if rng.random() < 0.05 else 16) for _ in range(rng.integers(1, 8))] for k in ids}
    hyps = {}
    for j, k in enumerate(ids):
        kind = j % 6
        if kind == 0:
            hyps[k] = refs[k][0]
        elif kind in (1, 2):
            w = refs[k][-1].split()
            for _ in range(rng.integers(1, 4)):
                if len(w) > 1 and rng.random() < 0.5:
                    w.pop(rng.integers(len(w)))
                else:
                    w.insert(rng.integers(len(w) + 1), str(rng.choice(COMMON)))
            hyps[k] = ' '.join(w)
        elif kind == 3:
            hyps[k] = caption()
        elif kind == 4:
            hyps[k] = str(rng.choice(COMMON))
        else:
            hyps[k] = ['', '...', 'A', 'the the the the', caption(30, 60)][j // 6 % 5]
    return refs, hyps


def coco_tokenize(captions):
    "pycocoevalcap's own PTBTokenizer on {id: [caption, ...]} (it writes a temporary file into its package folder)."
    return PTBTokenizer().tokenize({k: [{'caption': c} for c in v] for k, v in captions.items()})


@pytest.fixture(scope='module')
def tokenized():
    "Per seed: references and hypotheses as pycocoevalcap tokenizes them (as COCOEvalCap does: each on its own)."
    out = {}
    for seed in SEEDS:
        refs, hyps = corpus(seed)
        out[seed] = coco_tokenize(refs), coco_tokenize({k: [h] for k, h in hyps.items()})
    return out


@pytest.fixture(scope='module')
def coco_meteor():
    m = Meteor()
    yield m
    m.__del__()  # stops its jar


def test_corpus_covers_the_cases():
    refs, hyps = corpus(0)
    caps = [c for v in refs.values() for c in v] + list(hyps.values())
    assert len(refs) >= 50 and max(map(len, refs.values())) >= 5 and min(map(len, refs.values())) == 1
    assert '' in caps and any(len(c.split()) == 1 for c in caps) and max(len(c.split()) for c in caps) > 40
    assert any(not c.isascii() for c in caps) and any('"' in c for c in caps)


@pytest.mark.parametrize('seed', SEEDS)
def test_ptb_tokenize_is_identical(seed, tokenized):
    refs, hyps = corpus(seed)
    gts, res = tokenized[seed]
    assert ptb_tokenize(refs) == gts
    both = ptb_tokenize({**{('r', k): v for k, v in refs.items()}, **{('h', k): [h] for k, h in hyps.items()}})
    assert {k: both['r', k] for k in refs} == gts and {k: both['h', k] for k in hyps} == res


def test_ptb_tokenize_keeps_line_breaks_inside_a_caption():
    # pycocoevalcap's tokenizer would shift every later caption onto the wrong image here
    assert ptb_tokenize({1: ['a\rb', 'c\x0bd\x0ce'], 2: ['f\u2028g\u2029h'], 3: ['end.']}) == {
        1: ['a b', 'c d e'],
        2: ['f g h'],
        3: ['end'],
    }


def close(a, b, eps=1e-9):
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=eps)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('tokens', ['ptb', 'raw'])
def test_bleu_rouge_cider_match_pycocoevalcap(seed, tokens, tokenized):
    if tokens == 'ptb':
        gts, res = tokenized[seed]
    else:  # raw strings: double spaces, tabs and punctuation, which BLEU/CIDEr (split()) and ROUGE (split(' '))
        # treat differently
        refs, hyps = corpus(seed)
        gts, res = refs, {k: [h] for k, h in hyps.items()}
    for n in (4, 2):
        s, per = Bleu(n).compute_score(gts, res, verbose=0)
        ours, ours_per = bleu(gts, res, n)
        assert len(ours) == n and close(ours, s) and close(ours_per, per)
    s, per = Rouge().compute_score(gts, res)
    ours, ours_per = rouge_l(gts, res)
    assert close(ours, s) and close(ours_per, per)
    s, per = Cider().compute_score(gts, res)
    ours, ours_per = cider_d(gts, res)
    assert close(ours, s) and close(ours_per, per)


def test_metrics_on_edge_cases():
    gts = {1: ['a'], 2: [''], 3: ['a a a a a', 'b'], 4: ['x y'], 5: ['p q r s t u v']}
    res = {1: ['a'], 2: [''], 3: ['a a'], 4: [''], 5: ['q']}
    for ours, theirs in [
        (bleu, Bleu(4).compute_score),
        (rouge_l, Rouge().compute_score),
        (cider_d, Cider().compute_score),
    ]:
        kw = {'verbose': 0} if ours is bleu else {}
        s, per = theirs(gts, res, **kw)
        o, o_per = ours(gts, res)
        assert close(o, s) and close(o_per, per), ours.__name__


def test_lcs_length_against_dynamic_programming():
    rng = np.random.default_rng(3)
    for _ in range(500):
        a, b = (list(rng.choice(list('abcde'), rng.integers(0, 30))) for _ in range(2))
        t = np.zeros((len(a) + 1, len(b) + 1), int)
        for i in range(len(a)):
            for j in range(len(b)):
                t[i + 1, j + 1] = t[i, j] + 1 if a[i] == b[j] else max(t[i, j + 1], t[i + 1, j])
        assert lcs_length(a, b) == t[-1, -1] == lcs_length(b, a)
    long = [str(i % 97) for i in range(3000)]
    assert lcs_length(long, long[::-1]) == lcs_length(long[::-1], long)


def test_meteor_equals_pycocoevalcap(tokenized, coco_meteor):
    with MeteorScorer() as scorer:
        for seed in SEEDS:
            gts, res = tokenized[seed]
            s, per = coco_meteor.compute_score(gts, res)
            ours, ours_per = scorer(gts, res)
            assert ours == s and ours_per.tolist() == per
        # untokenized captions: upper case, punctuation, '|||' and double spaces in hypotheses
        refs, hyps = corpus(5)
        gts, res = refs, {k: [h] for k, h in hyps.items()}
        s, per = coco_meteor.compute_score(gts, res)
        ours, ours_per = scorer(gts, res)
        assert ours == s and ours_per.tolist() == per


def test_meteor_function(coco_meteor):
    gts = {1: ['a man is riding a horse', 'a person on a brown horse'], 2: ['two dogs playing in snow'], 3: ['x']}
    res = {1: ['a man rides a horse'], 2: ['dogs play in the snow'], 3: ['']}
    s, per = meteor(gts, res)
    assert (s, per.tolist()) == coco_meteor.compute_score(gts, res)


def tree_state(root: Path) -> dict:
    """Every file and folder under `root` with its size and modification time: a folder's mtime changes when a file
    is created or removed in it, even a temporary one."""
    return {str(p): (p.stat().st_size if p.is_file() else None, p.stat().st_mtime_ns) for p in [root, *root.rglob('*')]}


@pytest.fixture(scope='module')
def pipeline(coco_meteor):
    "caption_metrics on a random corpus, with the state of the pycocoevalcap package folder before and after."
    refs, hyps = corpus(1)
    pkg = Path(importlib.util.find_spec('pycocoevalcap').submodule_search_locations[0])
    before = tree_state(pkg)
    got = caption_metrics(refs, hyps)
    after = tree_state(pkg)
    return refs, hyps, got, pkg, before, after


def test_caption_metrics_equals_cocoevalcap(pipeline, coco_meteor):
    refs, hyps, got, *_ = pipeline
    gts, res = coco_tokenize(refs), coco_tokenize({k: [h] for k, h in hyps.items()})  # as COCOEvalCap.evaluate
    want = dict(zip(['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4'], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    want['METEOR'] = coco_meteor.compute_score(gts, res)[0]
    want['ROUGE_L'] = Rouge().compute_score(gts, res)[0]
    want['CIDEr'] = Cider().compute_score(gts, res)[0]
    assert list(got) == list(want)
    assert got['METEOR'] == want['METEOR']
    assert close([got[k] for k in want], [want[k] for k in want])
    assert all(type(v) is float for v in got.values())


def test_caption_metrics_writes_nothing_into_the_package(pipeline):
    refs, hyps, got, pkg, before, after = pipeline
    assert after == before
    # the check sees pycocoevalcap's own tokenizer, which writes (and removes) a file in its package folder
    now = tree_state(pkg)
    coco_tokenize({1: ['a b']})
    assert tree_state(pkg) != now


def test_without_java_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))
    msg = 'METEOR and PTB tokenization need Java (install a JRE, e.g. apt-get install default-jre-headless)'
    for call in (
        lambda: caption_metrics({1: ['a dog']}, {1: 'a dog'}),
        lambda: ptb_tokenize({1: ['a dog']}),
        lambda: meteor({1: ['a dog']}, {1: ['a dog']}),
        MeteorScorer,
    ):
        with pytest.raises(VLLabError) as e:
            call()
        assert str(e.value) == msg


@pytest.mark.parametrize(
    'refs, hyps, message',
    [
        ({1: ['a']}, {}, 'no hypotheses to evaluate'),
        ({}, {}, 'no hypotheses to evaluate'),
        (
            {i: ['a'] for i in range(10)},
            {0: 'a'},
            '9 images have references but no hypothesis: 1, 2, 3, 4, 5 and 4 more',
        ),
        ({1: ['a']}, {1: 'a', 'x': 'b', 'y': 'c'}, "2 images have a hypothesis but no references: 'x', 'y'"),
        (
            {1: ['a'], 2: ['b']},
            {1: 'a', 3: 'c'},
            '1 image has references but no hypothesis: 2; 1 image has a hypothesis but no references: 3',
        ),
        ({1: ['a']}, {1: 7}, 'image 1: the hypothesis is int, not a string'),
        ({1: ['a']}, {1: ['a']}, 'image 1: the hypothesis is list, not a string'),
        ({1: ['a', None]}, {1: 'a'}, 'image 1: a reference caption is NoneType, not a string'),
        ({1: 'a dog'}, {1: 'a'}, 'image 1: expected a non-empty list of reference captions'),
        ({1: []}, {1: 'a'}, 'image 1: expected a non-empty list of reference captions'),
        ([['a']], ['a'], 'references and hypotheses must be dicts keyed by image id, got list and list'),
    ],
)
def test_bad_input(monkeypatch, refs, hyps, message):
    monkeypatch.setattr('vl_lab.capmetrics.MeteorScorer', None)  # checked before any jar starts
    with pytest.raises(VLLabError, match='^' + __import__('re').escape(message)) as e:
        caption_metrics(refs, hyps)
    assert '\n' not in str(e.value)


def test_scorers_check_their_input():
    with pytest.raises(VLLabError, match='expected exactly one hypothesis, got 2'):
        bleu({1: ['a']}, {1: ['a', 'b']})
    with pytest.raises(VLLabError, match='1 image has references but no hypothesis: 2'):
        cider_d({1: ['a'], 2: ['b']}, {1: ['a']})
    with pytest.raises(VLLabError, match='no hypotheses to evaluate'):
        rouge_l({}, {})
    with pytest.raises(VLLabError, match='a hypothesis caption is int'):
        meteor({1: ['a']}, {1: [3]})
