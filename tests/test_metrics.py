"""vl_lab.metrics against naive or reference implementations: a full-matrix retrieval written out by sorting,
torchmetrics' retrieval metrics, classification metrics counted sample by sample, and the official VQA accuracy
loop."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vl_lab.core import VLLabError
from vl_lab.metrics import (
    classification_metrics,
    itm_accuracy,
    normalize_answer,
    retrieval_metrics,
    vqa_accuracy,
    vqa_score,
    zero_shot_classify,
)


def naive_retrieval(img, txt, owner, ks=(1, 5, 10)):
    "The whole N x M score matrix; every query's candidates sorted by (score descending, right ones last among equals)."
    img, txt = F.normalize(torch.as_tensor(img).float(), dim=-1), F.normalize(torch.as_tensor(txt).float(), dim=-1)
    S, owner = (img @ txt.T).tolist(), list(map(int, owner))
    out = {}

    def ranked(scores, right):
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], right(j)))
        return [k + 1 for k, j in enumerate(order) if right(j)]  # 1-based positions of the right items

    def dcg(pos, n_right):
        ideal = sum(1 / math.log2(p + 1) for p in range(1, min(n_right, 10) + 1))
        return sum(1 / math.log2(p + 1) for p in pos if p <= 10) / ideal

    per = {
        't2i': [ranked([S[i][j] for i in range(len(S))], lambda i, j=j: i == owner[j]) for j in range(len(owner))],
        'i2t': [ranked(S[i], lambda j, i=i: owner[j] == i) for i in range(len(S)) if i in owner],
    }
    for d, positions in per.items():
        best = np.array([p[0] for p in positions], float)
        out.update({f'{d}_R@{k}': float((best <= k).mean()) for k in ks})
        out.update(
            {
                f'{d}_MRR': float((1 / best).mean()),
                f'{d}_median_rank': float(np.median(best)),
                f'{d}_mean_rank': float(best.mean()),
                f'{d}_NDCG@10': float(np.mean([dcg(p, len(p)) for p in positions])),
            }
        )
    counts = np.bincount(owner, minlength=len(S))
    out.update(
        {
            'chance_t2i_R@1': 1 / len(S),
            'chance_i2t_R@1': float((counts[counts > 0] / len(owner)).mean()),
            'n_images': len(S),
            'n_texts': len(owner),
            'n_images_without_text': int((counts == 0).sum()),
        }
    )
    return out


def grid_embeddings(n, dim, rng):
    """Rows of four entries +-1 (normalised: +-0.5), so every score is a multiple of 1/4, exact in any order: many
    exact ties."""
    x = np.zeros((n, dim), np.float32)
    for r in range(n):
        x[r, rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return torch.from_numpy(x)


def owners(n_images, n_texts, rng, without=0):
    "Caption owners, shuffled: one caption for each image but the last `without`, the others at random among those."
    n = n_images - without
    return torch.from_numpy(rng.permutation(np.concatenate([np.arange(n), rng.integers(0, n, n_texts - n)])))


def assert_same(got, want):
    assert set(got) == set(want), set(got) ^ set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), (k, got[k], want[k])


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('chunk', [1, 7, 1000])
def test_retrieval_matches_naive_with_ties(seed, chunk):
    rng = np.random.default_rng(seed)
    n, m = 23, 61
    img, txt = grid_embeddings(n, 6, rng), grid_embeddings(m, 6, rng)
    txt[:5] = img[3]
    txt[5:8] = txt[8]  # some captions equal to an image, some equal to each other
    own = owners(n, m, rng, without=3 if seed == 2 else 0)  # seed 2: three images have no caption
    got, want = retrieval_metrics(img, txt, own, chunk=chunk), naive_retrieval(img, txt, own)
    assert_same(got, want)
    assert got['n_images_without_text'] == (3 if seed == 2 else 0)


def test_retrieval_ties_are_pessimistic():
    m = retrieval_metrics(torch.ones(4, 3), torch.ones(10, 3), torch.arange(10) % 4)
    assert m['t2i_mean_rank'] == 4 and m['t2i_R@1'] == 0  # every image ties: the right one is ranked last
    assert m['i2t_R@1'] == 0 and m['i2t_median_rank'] == 8.5  # 3, 3, 2, 2 captions: 1 + the 7, 7, 8, 8 others


@pytest.mark.parametrize('chunk', [1, 16, 4096])
def test_retrieval_matches_naive_random(chunk):
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(40, 12, generator=g), torch.randn(150, 12, generator=g)
    own = owners(40, 150, np.random.default_rng(3))
    assert_same(
        retrieval_metrics(img.numpy().astype(np.float64), txt, own, ks=(1, 3, 10), chunk=chunk),
        naive_retrieval(img, txt, own, ks=(1, 3, 10)),
    )


def test_retrieval_matches_torchmetrics():
    from torchmetrics.functional.retrieval import (
        retrieval_hit_rate,
        retrieval_normalized_dcg,
        retrieval_reciprocal_rank,
    )

    g = torch.Generator().manual_seed(4)
    img, txt = (
        F.normalize(torch.randn(30, 8, generator=g), dim=-1),
        F.normalize(torch.randn(120, 8, generator=g), dim=-1),
    )
    own = owners(30, 120, np.random.default_rng(4))
    # torchmetrics 1.9 counts an item with score <= 0 as irrelevant (`where(preds > 0, target, 0)`): shift cosines
    # above 0
    S = (img @ txt.T).double() + 2
    assert len(torch.unique(S)) == S.numel()  # no ties: torchmetrics breaks them by sort order
    got = retrieval_metrics(img, txt, own, chunk=9)
    queries = {
        't2i': [(S[:, j], torch.arange(30) == own[j]) for j in range(120)],
        'i2t': [(S[i], own == i) for i in range(30)],
    }
    for d, qs in queries.items():

        def mean(f, **kw):
            return torch.stack([f(p, t, **kw) for p, t in qs]).double().mean().item()

        assert got[f'{d}_MRR'] == pytest.approx(mean(retrieval_reciprocal_rank), rel=1e-6)
        assert got[f'{d}_NDCG@10'] == pytest.approx(mean(retrieval_normalized_dcg, top_k=10), rel=1e-6)
        for k in (1, 5, 10):
            assert got[f'{d}_R@{k}'] == pytest.approx(mean(retrieval_hit_rate, top_k=k), rel=1e-6)


@pytest.mark.parametrize(
    'call, msg',
    [
        (lambda e: retrieval_metrics(e.nan, e.img, e.own), 'image_emb: embeddings contain NaN or inf'),
        (lambda e: retrieval_metrics(e.img, e.img * float('inf'), e.own), 'text_emb: embeddings contain NaN or inf'),
        (lambda e: retrieval_metrics(e.img[:0], e.img, e.own), 'non-empty'),
        (lambda e: retrieval_metrics(e.img, e.img[:0], e.own[:0]), 'non-empty'),
        (lambda e: retrieval_metrics(e.img[:, :0], e.img, e.own), 'non-empty'),
        (lambda e: retrieval_metrics(e.img, e.img[:, :4], e.own), 'dimension 8 but text_emb has 4'),
        (lambda e: retrieval_metrics(e.img, e.img, e.own[:-1]), 'expected shape (10,)'),
        (lambda e: retrieval_metrics(e.img, e.img, e.own + 1), 'must be in [0, 10)'),
        (lambda e: retrieval_metrics(e.img, e.img, e.own - 1), 'must be in [0, 10)'),
        (lambda e: retrieval_metrics(e.img, e.img, e.own.float()), 'integer image indices'),
        (lambda e: retrieval_metrics(e.img, e.img, e.own, ks=(0, 5)), 'ks must be positive'),
        (lambda e: retrieval_metrics(e.img, e.img, e.own, chunk=0), 'chunk'),
        (lambda e: zero_shot_classify(e.nan, e.img), 'image_emb: embeddings contain NaN or inf'),
        (lambda e: zero_shot_classify(e.img, e.nan), 'class_text_emb: embeddings contain NaN or inf'),
        (lambda e: zero_shot_classify(e.img, e.img[:, :4]), 'dimension 8 but class_text_emb has 4'),
        (lambda e: zero_shot_classify(e.img, e.img, templates_per_class=3), 'do not split'),
        (lambda e: classification_metrics([], []), 'non-empty'),
        (lambda e: classification_metrics([0, 1], [0, 1, 1]), 'y_true has 2 labels but y_pred has 3'),
        (lambda e: itm_accuracy(torch.zeros(0, 2), []), 'at least one'),
        (lambda e: itm_accuracy(torch.zeros(3, 2), [0, 1]), '3 scores for 2 labels'),
        (lambda e: itm_accuracy(torch.full((2, 2), float('nan')), [0, 1]), 'NaN or inf'),
        (lambda e: itm_accuracy(torch.zeros(2, 3), [0, 1]), 'shape (N, 2) or (N,)'),
        (lambda e: vqa_accuracy([], []), 'no predictions'),
        (lambda e: vqa_accuracy(['a'], [['a'], ['b']]), '1 predictions, 2 answer lists'),
        (lambda e: vqa_accuracy(['a'], [['a']], answer_types=['x', 'y']), '2 answer types'),
        (lambda e: vqa_accuracy([None], [['a']]), 'must be strings'),
        (lambda e: vqa_accuracy(['a'], [['a', 3]]), 'must be strings'),
        (lambda e: classification_metrics([0], [0], labels=[]), 'labels: expected a non-empty'),
    ],
)
def test_bad_inputs(call, msg):
    class E:
        pass

    e = E()
    e.img = torch.randn(10, 8)
    e.own = torch.arange(10)
    e.nan = e.img.clone()
    e.nan[2, 3] = float('nan')
    with pytest.raises(VLLabError) as err:
        call(e)
    assert msg in str(err.value) and '\n' not in str(err.value)


def test_zero_shot_prompt_ensembling():
    g = torch.Generator().manual_seed(5)
    cls, img = torch.randn(5, 3, 16, generator=g), torch.randn(40, 16, generator=g)
    want = (F.normalize(img, dim=-1) @ F.normalize(F.normalize(cls, dim=-1).mean(1), dim=-1).T).argmax(1)
    assert torch.equal(zero_shot_classify(img, cls), want)
    assert torch.equal(zero_shot_classify(img.numpy(), cls.reshape(15, 16).numpy(), templates_per_class=3), want)


def naive_classification(y_true, y_pred, labels=None) -> dict:
    """Counted one sample at a time, without numpy or scikit-learn: a label outside `labels` still makes its samples
    errors (and false positives or negatives of the classes it is confused with); F1 = 2 TP / (#true + #predicted),
    0 for a class never true nor predicted. Each F1 and the accuracy are one division of exact counts, and the mean
    of the F1s is numpy's (its pairwise sum), so the result is the implementation's to the last bit."""
    labels = sorted(set(y_true) | set(y_pred)) if labels is None else list(labels)
    pairs, n_true, n_pred = Counter(zip(y_true, y_pred)), Counter(y_true), Counter(y_pred)
    f1 = [2 * pairs[c, c] / (n_true[c] + n_pred[c]) if n_true[c] + n_pred[c] else 0.0 for c in labels]
    return dict(
        accuracy=sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true),
        macro_f1=float(np.mean(f1)),
        n=len(y_true),
        labels=labels,
        confusion=[[pairs[a, b] for b in labels] for a in labels],
    )


@pytest.mark.parametrize('seed', range(4))
def test_classification_matches_naive_exactly(seed):
    "The JSON written to metrics.json, as a string: same keys, order, types and float bits."
    rng = np.random.default_rng(seed)
    for i in range(100):
        c, n = int(rng.integers(1, 10)), int(rng.integers(1, 150))
        yt, yp = rng.integers(0, c, n).tolist(), rng.integers(0, c + 1, n).tolist()  # class c is only predicted
        if i % 4 == 1:
            yt = [0 if t == c - 1 else t for t in yt]  # class c - 1 is never true
        if i % 4 == 2:
            yp = [t if rng.random() < 0.8 else p for t, p in zip(yt, yp)]  # mostly right
        labels = [
            None,
            list(range(c + 2)),  # classes in neither
            sorted(rng.choice(c, max(1, c // 2), replace=False).tolist()),  # a subset: the others count as errors
            rng.permutation(c + 1).tolist(),  # another order
            [c + 5],  # no label of `labels` is true or predicted
        ][i % 5]
        got = classification_metrics(torch.tensor(yt) if i % 2 else yt, np.array(yp), labels=labels)
        assert json.dumps(got) == json.dumps(naive_classification(yt, yp, labels)), (yt, yp, labels)


@pytest.mark.parametrize(
    'yt, yp',
    [
        ([3], [3]),  # one class
        ([0] * 5, [1] * 5),
        ([0, 1, 1, 2], [0, 1, 1, 2]),
        (['cat', 'dog', 'fox', 'dog', 'cat', 'fox'], ['cat', 'cat', 'dog', 'dog', 'fox', 'fox']),
    ],
)
def test_classification_small_cases_match_naive(yt, yp):
    for labels in (None, sorted(set(yt))[:1], sorted(set(yt) | set(yp)) + ['owl' if isinstance(yt[0], str) else 9]):
        got = classification_metrics(yt, yp, labels=labels)
        assert json.dumps(got) == json.dumps(naive_classification(yt, yp, labels))
        assert type(got['accuracy']) is float and type(got['macro_f1']) is float and type(got['n']) is int
        assert all(type(x) is int for row in got['confusion'] for x in row)


def test_classification_by_hand():
    m = classification_metrics(['cat', 'dog', 'fox', 'dog'], ['cat', 'cat', 'dog', 'owl'], labels=['cat', 'dog'])
    # cat: TP 1, 1 true, 2 predicted -> 2/3; dog: TP 0 -> 0; fox and owl are errors outside the table
    assert m == dict(accuracy=0.25, macro_f1=(2 / 3 + 0) / 2, n=4, labels=['cat', 'dog'], confusion=[[1, 0], [1, 0]])
    m = classification_metrics([0.5, 1.5], [0.5, 0.5])  # float labels, which scikit-learn alone calls continuous
    assert (m['labels'], m['confusion'], m['accuracy']) == ([0.5, 1.5], [[1, 0], [1, 0]], 0.5)


def test_itm_accuracy():
    labels = torch.tensor([1] * 4 + [0] * 4)
    logits = torch.tensor([[0.0, 1], [0, 2], [0, 3], [1, 0], [1, 0], [2, 0], [0, 1], [0, 1]])
    m = itm_accuracy(logits, labels)
    assert (m['accuracy'], m['pos_recall'], m['neg_recall'], m['n'], m['n_pos'], m['n_neg']) == (
        0.625,
        0.75,
        0.5,
        8,
        4,
        4,
    )
    assert itm_accuracy(logits.softmax(1), labels) == m  # probabilities: the same argmax
    assert itm_accuracy(logits[:, 1] - logits[:, 0], labels) == m  # (N,) match logits
    assert itm_accuracy((logits[:, 1] - logits[:, 0]).sigmoid(), labels, probs=True) == m
    assert itm_accuracy(torch.tensor([1.0]), [1])['neg_recall'] is None


def official_vqa(pred, answers):
    "The official loop: for each human answer, the matches among the other nine, min(1, matches / 3); then the mean."
    pred, gts = normalize_answer(pred), [dict(id=i, answer=normalize_answer(a)) for i, a in enumerate(answers)]
    accs = []
    for gt in gts:
        others = [o for o in gts if o != gt]
        accs.append(min(1, len([o for o in others if o['answer'] == pred]) / 3))
    return sum(accs) / len(accs)


def test_vqa_subset_average_matches_official_loop():
    rng = np.random.default_rng(7)
    words = ['yes', 'no', '2', 'two', 'red', 'the red', 'blue']
    for _ in range(200):
        answers = list(rng.choice(words, rng.integers(1, 11)))
        pred = str(rng.choice(words))
        assert vqa_score(pred, answers) == pytest.approx(official_vqa(pred, answers), abs=1e-12)
    for k, want in [(0, 0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1), (5, 1)]:
        assert vqa_score('blue', ['blue'] * k + ['red'] * (10 - k)) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(
    'raw, want',
    [
        ('YES', 'yes'),
        ('Yes.', 'yes'),
        ('yes!', 'yes'),
        ('yes ?', 'yes'),
        ('red, white', 'red white'),
        ('red,white', 'red white'),
        ('left-handed', 'left handed'),
        ('1,000', '1000'),
        ('10,000 feet', '10000 feet'),
        ('1,000 (approx)', '1000 approx'),
        ('3.5', '3.5'),
        ('3.', '3'),
        ('mr. smith', 'mr smith'),
        ('a dog', 'dog'),
        ('an apple', 'apple'),
        ('the man', 'man'),
        ('The a an', ''),
        ('anthem', 'anthem'),
        ('one', '1'),
        ('Three', '3'),
        ('zero', '0'),
        ('none', '0'),
        ('two cats', '2 cats'),
        ('dont', "don't"),
        ('cant', "can't"),
        ('whats', "what's"),
        ('oclock', "o'clock"),
        ('its', 'its'),
        ('  two\tdogs\n', '2 dogs'),
        ('The two Dogs dont, bark.', "2 dogs don't bark"),
    ],
)
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


def test_vqa_accuracy_per_answer_type():
    preds = ['yes', 'Two', 'blue', 'no']
    answers = [['yes'] * 10, ['2'] * 3 + ['3'] * 7, ['red'] * 10, ['no'] * 1 + ['yes'] * 9]
    m = vqa_accuracy(preds, answers, answer_types=['yes/no', 'number', 'other', 'yes/no'])
    assert m['overall'] == pytest.approx((1 + 0.9 + 0 + 0.3) / 4) and m['n'] == 4
    assert m['per_answer_type'] == pytest.approx({'number': 0.9, 'other': 0.0, 'yes/no': 0.65})
    assert 'per_answer_type' not in vqa_accuracy(preds, answers)
