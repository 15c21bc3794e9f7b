"""The README and the pages of docs/ against the code. Every command line of their shell blocks (```bash, ```sh,
```console) and every inline `vl-lab ...` / `make ...` is checked: a make target is a rule of the Makefile, a vl-lab
subcommand is listed by `vl-lab --help` and each of its --options by `vl-lab SUB --help`, a script or a path exists,
and anything else is a known external command listed here. Every relative link points to a file that exists (and to
a heading that exists, for a link into a Markdown page); the README is a front page of at most 160 lines, links every
page of docs/, and no line of these pages is over 120 characters."""

import functools
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, VL_LAB

README = ROOT / 'README.md'
PAGES = sorted((ROOT / 'docs').glob('*.md'))
DOCS = [README, *PAGES]
SHELL_BLOCKS = ('bash', 'sh', 'console', 'shell')
# commands the lab does not provide: the shell's, the system's, and those of packages and clusters named in the docs
EXTERNAL = {
    'cd',
    'export',
    'git',
    'pip',
    'sleep',
    'curl',
    'tensorboard',
    'ray',
    'scontrol',
    'sbatch',
}
# commands that run another command: the one they run is checked (torchrun .venv/bin/vl-lab train ...)
WRAPPERS = {'torchrun', 'accelerate', 'srun', 'nohup', 'env', 'time'}
KEYWORDS_DROPPED = {'do', 'then', 'else', 'if', 'while', 'until', '!', '{', '}', 'done', 'fi'}
FENCE = re.compile(r'^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$', re.M | re.S)
INLINE = re.compile(r'`([^`\n]+)`')
LINK = re.compile(r'!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
HEADING = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$', re.M)


# ---- reading the pages


def fenced(text):
    "(language, body, line number of the body's first line) of each fenced block."
    return [(m[1].lower(), m[2], text[: m.start(2)].count('\n') + 1) for m in FENCE.finditer(text)]


def prose(text):
    "The text outside fenced blocks, with the line count kept (a block's lines become empty lines)."
    return FENCE.sub(lambda m: '\n' * m[0].count('\n'), text)


def logical_lines(body, first, console=False):
    "(line number, line) of a shell block: backslash continuations joined, comment lines and output lines dropped."
    out, buf, start = [], '', None
    for k, raw in enumerate(body.splitlines(), first):
        line = raw.rstrip()
        if not buf:
            start = k
            if line.startswith('$ '):
                line = line[2:]
            elif console:
                continue  # output of a console session
        if line.endswith('\\'):
            buf += line[:-1] + ' '
            continue
        line, buf = buf + line, ''
        if line.strip() and not line.lstrip().startswith('#'):
            out.append((start, line))
    return out


def strip_comment(line):
    "The line without a trailing `# comment` (a # that starts a word outside quotes)."
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in '\'"':
            quote = c
        elif c == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def substitutions(line):
    "(the line with each $(...) replaced by a placeholder word, the commands inside them)."
    inner, out, i = [], '', 0
    while i < len(line):
        if line.startswith('$(', i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {'(': 1, ')': -1}.get(line[j], 0)
                j += 1
            inner.append(line[i + 2 : j - 1])
            out, i = out + 'SUBST', j
        else:
            out, i = out + line[i], i + 1
    return out, inner


def simple_commands(line):
    "The simple commands (lists of words) of a shell line: split at ; & | && || ( ), redirections dropped."
    line, inner = substitutions(strip_comment(line))
    lex = shlex.shlex(line, posix=True, punctuation_chars=';&|()<>')
    lex.whitespace_split = True
    cmds, words, redirect = [], [], False
    for tok in lex:
        if tok and set(tok) <= set(';&|()'):
            cmds.append(words)
            words = []
        elif tok and set(tok) <= set('<>&') and set(tok) & set('<>'):
            if words and words[-1].isdigit():
                words.pop()  # 2>&1: the descriptor
            redirect = True
        elif redirect:
            redirect = False  # the file of a redirection
        else:
            words.append(tok)
    cmds.append(words)
    for sub in inner:
        cmds += simple_commands(sub)
    return [c for c in map(command_words, cmds) if c]


def command_words(words):
    "The words of a simple command from the command name on: assignments and shell keywords dropped; [] for none."
    words = list(words)
    while words and (re.match(r'^[A-Za-z_]\w*=', words[0]) or words[0] in KEYWORDS_DROPPED):
        words.pop(0)
    if not words or words[0] in ('for', 'case', 'SUBST'):
        return []  # a loop header, or a value computed by a command checked on its own
    return words


def shell_lines(path):
    "(line number, line) of every command line of the page's shell blocks, and of its inline vl-lab / make code."
    text = path.read_text()
    lines = [
        ln
        for lang, body, first in fenced(text)
        if lang in SHELL_BLOCKS
        for ln in logical_lines(body, first, console=lang == 'console')
    ]
    for k, line in enumerate(prose(text).splitlines(), 1):
        lines += [(k, m[1]) for m in INLINE.finditer(line) if re.match(r'^((\.venv/bin/)?vl-lab|make)\s', m[1])]
    return lines


# ---- what the code offers


def make_targets(makefile_text):
    "Targets of a Makefile: names of a rule with a recipe or prerequisites (not .PHONY, not target variables)."
    targets, current = set(), []
    for line in makefile_text.splitlines():
        if line.startswith('\t'):
            targets.update(current)
            continue
        current = []
        m = re.match(r'^([A-Za-z0-9_./%-][^:#=]*?)\s*:(?![:=])(.*)$', line)
        if not m or re.match(r'\s*(export\s+|override\s+)?[A-Za-z_][\w.]*\s*[:+?!]?=', m[2]):
            continue  # not a rule, or a target-specific variable
        names = [n for n in m[1].split() if not n.startswith('.')]
        prereqs = m[2].split('#')[0].split()
        current = names
        if prereqs:
            targets.update(names)
    return targets


@functools.cache
def the_make_targets():
    return make_targets((ROOT / 'Makefile').read_text())


@functools.cache
def cli_help(sub=None):
    "`vl-lab --help` or `vl-lab SUB --help`, run once."
    r = subprocess.run([VL_LAB, *([sub] if sub else []), '--help'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@functools.cache
def subcommands():
    return set(re.search(r'\{([\w,-]+)\}', cli_help())[1].split(','))


@functools.cache
def options(sub):
    return set(re.findall(r'(?<![\w-])--[a-z][\w-]*', cli_help(sub)))


# ---- checking a command


def is_python(word):
    return re.fullmatch(r'python(3(\.\d+)?)?', Path(word).name) is not None


def checkable(word):
    "Whether the lab can check this command name (so a wrapper's inner command is found)."
    return word in ('make', 'vl-lab') or Path(word).name == 'vl-lab' or is_python(word) or '/' in word


def check_command(words, targets, subs, opts):
    "(kind, problem or None) of one simple command; `targets`, `subs`, `opts(sub)`: what the lab offers."
    cmd, args = words[0], words[1:]
    if '/' in cmd and not (ROOT / cmd).exists():
        return 'path', f'{cmd} does not exist'
    if cmd == 'make':
        bad = [a for a in args if not a.startswith('-') and '=' not in a and a not in targets]
        return 'make', f'not a target of the Makefile: {", ".join(bad)}' if bad else None
    if Path(cmd).name == 'vl-lab':
        if not args or args[0] in ('-h', '--help'):
            return 'vl-lab', None
        if args[0] not in subs:
            return 'vl-lab', f'vl-lab has no subcommand {args[0]!r} (vl-lab --help: {", ".join(sorted(subs))})'
        bad = sorted({a.split('=')[0] for a in args[1:] if a.startswith('--')} - opts(args[0]))
        return 'vl-lab', f'not an option of vl-lab {args[0]}: {", ".join(bad)}' if bad else None
    if is_python(cmd):
        if args[:1] == ['-m']:
            ok = len(args) > 1 and importlib.util.find_spec(args[1].split('.')[0]) is not None
            return 'python', None if ok else f'no module {args[1:2]}'
        script = next((a for a in args if not a.startswith('-')), None)
        ok = script is not None and (ROOT / script).is_file()
        return 'python', None if ok else f'no script {script}'
    if cmd in WRAPPERS:
        inner = next((i for i, w in enumerate(args) if checkable(w)), None)
        return ('external', None) if inner is None else check_command(args[inner:], targets, subs, opts)
    if '/' in cmd:
        return 'path', None
    if cmd in EXTERNAL:
        return 'external', None
    return 'unknown', f'{cmd!r}: not a make target, vl-lab, a script, a path or a known external command'


def problems(path):
    "(kinds of the commands checked, problems found) of one page."
    targets, subs, kinds, found = the_make_targets(), subcommands(), [], []
    for k, line in shell_lines(path):
        for words in simple_commands(line):
            kind, why = check_command(words, targets, subs, options)
            kinds.append(kind)
            if why:
                found.append(f'{path.relative_to(ROOT)}:{k}: {line.strip()}\n    {why}')
    return kinds, found


# ---- links


def slug(heading):
    "GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."
    text = re.sub(r'`|\*\*?|\[([^\]]*)\]\([^)]*\)', r'\1', heading).strip().lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path):
    seen, out = {}, set()
    for h in HEADING.findall(prose(path.read_text())):
        s = slug(h)
        out.add(s if s not in seen else f'{s}-{seen[s]}')
        seen[s] = seen.get(s, 0) + 1
    return out


def relative_links(path):
    "(line number, target) of every relative link of the page, outside code."
    text = INLINE.sub(lambda m: ' ' * len(m[0]), prose(path.read_text()))
    return [
        (text[: m.start()].count('\n') + 1, m[1])
        for m in LINK.finditer(text)
        if not re.match(r'^[a-z][a-z0-9+.-]*:', m[1])
    ]


def broken_links(path):
    out = []
    for k, target in relative_links(path):
        file, _, anchor = target.partition('#')
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or not dest.is_relative_to(ROOT):
            out.append(f'{path.relative_to(ROOT)}:{k}: {target}: no such file')
        elif anchor and dest.suffix == '.md' and anchor not in anchors(dest):
            out.append(f'{path.relative_to(ROOT)}:{k}: {target}: no heading #{anchor} in {dest.name}')
    return out


# ---- the tests


def ids(p):
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize('page', DOCS, ids=ids)
def test_every_command_of_the_page_exists(page):
    kinds, found = problems(page)
    assert found == [], '\n'.join(found)


def test_the_pages_hold_commands_of_each_kind():
    kinds = [k for p in DOCS for k in problems(p)[0]]
    assert len(kinds) >= 40 and {'make', 'vl-lab', 'python', 'external'} <= set(kinds), kinds


@pytest.mark.parametrize('page', DOCS, ids=ids)
def test_every_relative_link_points_to_a_file(page):
    assert broken_links(page) == []


def test_the_readme_is_a_front_page_that_links_every_page():
    lines = README.read_text().splitlines()
    linked = {(README.parent / t.partition('#')[0]).resolve() for _, t in relative_links(README)}
    assert len(lines) <= 160, f'README.md has {len(lines)} lines: move the details to docs/'
    assert PAGES and [p.name for p in PAGES if p.resolve() not in linked] == []


@pytest.mark.parametrize('page', DOCS, ids=ids)
def test_no_line_is_over_120_characters(page):
    long = [k for k, line in enumerate(page.read_text().splitlines(), 1) if len(line) > 120]
    assert long == [], f'{ids(page)}: lines {long}'


def test_the_makefile_parser_reads_rules_and_nothing_else():
    text = 'X := 1\n.PHONY: a b c\nall: a b\na:\n\techo a\nb c: X := 2\nb: a  ## doc\n\techo b\nexport Y := 3\n'
    assert make_targets(text) == {'all', 'a', 'b'}
    assert {'report', 'test', 'lab', 'tensorboard'} <= the_make_targets()


def test_the_shell_reader_finds_the_commands_inside_loops_substitutions_and_wrappers():
    line = 'h=$(scontrol show x | head -n 1); for n in a b; do srun -w "$n" .venv/bin/vl-lab report --jobs 2 & done'
    cmds = simple_commands(line)
    assert ['scontrol', 'show', 'x'] in cmds and ['head', '-n', '1'] in cmds
    assert ['srun', '-w', '$n', '.venv/bin/vl-lab', 'report', '--jobs', '2'] in cmds and len(cmds) == 3
    assert simple_commands('make report > /tmp/r.log 2>&1  # heavy') == [['make', 'report']]
    block = 'make lab \\\n  --no-browser\n$ make test\n# a comment\n'
    assert [(k, line.split()) for k, line in logical_lines(block, 1)] == [
        (1, ['make', 'lab', '--no-browser']),
        (3, ['make', 'test']),
    ]


def test_a_wrong_command_is_reported():
    subs, opts = {'report'}, lambda sub: {'--jobs', '--help'}
    assert check_command(['make', 'nosuchtarget'], {'report'}, subs, opts)[1]
    assert check_command(['vl-lab', 'report', '--no-such-option'], set(), subs, opts)[1]
    assert check_command(['vl-lab', 'nosuchsub'], set(), subs, opts)[1]
    assert check_command(['python', 'bench/no_such_bench.py'], set(), subs, opts)[1]
    assert check_command(['frobnicate', '--all'], set(), subs, opts)[0] == 'unknown'
    wrapped = ['torchrun', '--standalone', 'vl-lab', 'report', '--jobs', '2']
    assert check_command(wrapped, set(), subs, opts) == ('vl-lab', None)
    assert slug('Beyond one machine: Ray') == 'beyond-one-machine-ray' and slug('bench_report.py') == 'bench_reportpy'
