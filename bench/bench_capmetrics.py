"""Benchmark: `caption_metrics` against pycocoevalcap's COCOEvalCap pipeline, 5,000 images x 5 references, in one run.

Captions come from a small grammar of COCO-like scenes (subject, action, object, place, each with synonyms; references
are 5 paraphrases of a scene, the hypothesis is the scene with one slot possibly wrong), with capitals and punctuation.
pycocoevalcap runs as COCOEvalCap does (no SPICE): PTBTokenizer on the references, then on the hypotheses, then
Bleu(4), Meteor(), Rouge(), Cider(). vl_lab runs `caption_metrics` (one tokenizer run; METEOR's jar started on the
paraphrases of the captions' words and scoring while BLEU, ROUGE-L and CIDEr run), then each of its parts on its own
for the per-metric times. Prints seconds per metric and in all, the ratio of the totals (aim: >= 2), and the largest
difference in the scores (METEOR must be equal). The paraphrase table's index is made once into the lab's cache
before the timing (a one-off, like a compiler's cache; its time is printed when this run made it). pycocoevalcap's
tokenizer writes a temporary file into its package folder: fine here.
"""

import sys
import time

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vl_lab.capmetrics import bleu, caption_metrics, cider_d, meteor, paraphrase_index, ptb_tokenize, rouge_l

N_IMAGES, N_REFS = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else (5000, 5)))

SLOTS = {
    'subject': [
        ['a man', 'a guy', 'a person', 'a young man'],
        ['a woman', 'a lady', 'a young woman'],
        ['two dogs', 'a pair of dogs', 'two puppies'],
        ['a little boy', 'a young child', 'a small kid'],
        ['a group of people', 'several people', 'a crowd of people'],
        ['a cat', 'a kitten', 'a tabby cat'],
        ['a brown horse', 'a horse', 'a pony'],
        ['a red bus', 'a city bus', 'a large bus'],
        ['a baseball player', 'a batter', 'a player in uniform'],
        ['an elderly man', 'an old man', 'a senior citizen'],
    ],
    'action': [
        ['is riding', 'rides', 'riding'],
        ['is sitting on', 'sits on', 'sitting on top of'],
        ['is standing next to', 'stands beside', 'standing near'],
        ['is playing with', 'plays with', 'playing with'],
        ['is holding', 'holds', 'holding'],
        ['is looking at', 'looks at', 'staring at'],
        ['is walking past', 'walks by', 'walking along'],
        ['is eating', 'eats', 'eating'],
    ],
    'object': [
        ['a skateboard', 'a skate board'],
        ['a wooden bench', 'a park bench', 'a bench'],
        ['a frisbee', 'a flying disc'],
        ['a red umbrella', 'an umbrella'],
        ['a slice of pizza', 'some pizza', 'a pizza'],
        ['a kite', 'a colorful kite'],
        ['a surfboard', 'a surf board'],
        ['a large clock', 'a clock tower'],
        ['a laptop computer', 'a laptop'],
        ['a tennis racket', 'a racquet'],
    ],
    'place': [
        ['in a park', 'at the park', 'in a grassy park'],
        ['on the beach', 'by the ocean', 'near the water'],
        ['on a city street', 'in the street', 'on a busy road'],
        ['in the kitchen', 'inside a kitchen'],
        ['at night', 'in the evening', 'after dark'],
        ['in front of a building', 'outside a building'],
        ['on a sunny day', 'under a blue sky'],
        ['in the snow', 'on a snowy hill'],
        ['', '', ''],
    ],
}


def corpus(seed=0):
    rng = np.random.default_rng(seed)

    def pick(opts):
        return opts[rng.integers(len(opts))]

    def say(scene):
        words = ' '.join(w for w in (pick(SLOTS[s][i]) for s, i in scene.items()) if w)
        if rng.random() < 0.7:
            words = words[0].upper() + words[1:]
        if rng.random() < 0.2:
            words = words.replace(' in ', ', in ', 1)
        return words + pick(['.', '.', '', ' .', '!'])

    refs, hyps = {}, {}
    for i in range(N_IMAGES):
        scene = {s: int(rng.integers(len(SLOTS[s]))) for s in SLOTS}
        refs[i] = [say(scene) for _ in range(N_REFS)]
        if rng.random() < 0.6:  # a model's caption: one slot is often wrong
            s = pick(list(SLOTS))
            scene[s] = int(rng.integers(len(SLOTS[s])))
        hyps[i] = say(scene)
    return refs, hyps


def timed(f, *a):
    t = time.perf_counter()
    out = f(*a)
    return out, time.perf_counter() - t


def coco(refs, hyps):
    "COCOEvalCap.evaluate without SPICE: seconds per step and the scores."
    sec, out = {}, {}
    t0 = time.perf_counter()
    gts, sec['tokenize refs'] = timed(
        PTBTokenizer().tokenize, {k: [{'caption': c} for c in v] for k, v in refs.items()}
    )
    res, sec['tokenize hyps'] = timed(PTBTokenizer().tokenize, {k: [{'caption': h}] for k, h in hyps.items()})
    (b, _), sec['BLEU'] = timed(lambda: Bleu(4).compute_score(gts, res, verbose=0))
    out.update({f'Bleu_{i}': s for i, s in enumerate(b, 1)})
    (out['METEOR'], _), sec['METEOR'] = timed(lambda: Meteor().compute_score(gts, res))  # starting the jar included
    (out['ROUGE_L'], _), sec['ROUGE_L'] = timed(Rouge().compute_score, gts, res)
    (out['CIDEr'], _), sec['CIDEr'] = timed(Cider().compute_score, gts, res)
    sec['total'] = time.perf_counter() - t0
    return sec, out


def ours(refs, hyps):
    "caption_metrics in all, then each part on its own."
    sec = {}
    out, total = timed(caption_metrics, refs, hyps)
    tok, sec['tokenize refs+hyps'] = timed(
        ptb_tokenize, {**{('r', k): v for k, v in refs.items()}, **{('h', k): [h] for k, h in hyps.items()}}
    )
    gts, res = {k: tok['r', k] for k in refs}, {k: tok['h', k] for k in refs}
    _, sec['BLEU'] = timed(bleu, gts, res)
    _, sec['METEOR'] = timed(meteor, gts, res)
    _, sec['ROUGE_L'] = timed(rouge_l, gts, res)
    _, sec['CIDEr'] = timed(cider_d, gts, res)
    sec['total'] = total
    return sec, out


if __name__ == '__main__':
    refs, hyps = corpus()
    index, made = timed(paraphrase_index)
    print(f"METEOR's paraphrase index: {index} ({'made now, in %.1f s' % made if made > 1 else 'made before'})")
    print(f'caption metrics over {N_IMAGES} images x {N_REFS} references (pycocoevalcap first, then vl_lab):')
    cs, cout = coco(refs, hyps)
    vs, vout = ours(refs, hyps)
    print(f'  {"step":<22}{"pycocoevalcap":>14}{"vl_lab":>10}')
    for step in ('tokenize refs', 'tokenize hyps', 'tokenize refs+hyps', 'BLEU', 'METEOR', 'ROUGE_L', 'CIDEr'):

        def fmt(d):
            return f'{d[step]:.2f} s' if step in d else '-'

        print(f'  {step:<22}{fmt(cs):>14}{fmt(vs):>10}')
    print(
        f'  {"total":<22}{cs["total"]:>12.2f} s{vs["total"]:>8.2f} s   '
        '(vl_lab total: caption_metrics, METEOR scoring meanwhile)'
    )
    print(f'  ratio pycocoevalcap/vl_lab total: {cs["total"] / vs["total"]:.2f}x (aim: >= 2)')
    diff = {k: abs(vout[k] - cout[k]) for k in cout}
    print('  scores: ' + ', '.join(f'{k} {v:.4f}' for k, v in vout.items()))
    print(
        f'  largest difference from pycocoevalcap: {max(diff.values()):.1e} '
        f'(METEOR equal: {vout["METEOR"] == cout["METEOR"]})'
    )
    assert max(diff.values()) < 1e-6 and vout['METEOR'] == cout['METEOR'], diff
