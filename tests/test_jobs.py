"""`vl-lab report`'s default `--jobs`: one run per CPU, no more than fit in the memory available (a run of the default
plan held about 1.3 GB: its kernel 1.13-1.18 GB, its papermill 0.12 GB), said in one line when memory decides; an
explicit --jobs is obeyed. The machine is faked: its CPU count and memory (the readers, or a /proc and cgroup tree)."""

import re

import pytest

from conftest import run_cli
from vl_lab import executor
from vl_lab.cli import main
from vl_lab.executor import RUN_BYTES, default_jobs, fit_jobs, memory_available


@pytest.fixture
def report(monkeypatch, tmp_path):
    """`vl-lab report --plan plan.yaml` in this process with the plan's work left out (its corpora, its runs, the
    page): returns a function of extra arguments and the faked (CPUs, bytes available) giving (jobs it ran, stdout)."""
    import vl_lab.report
    import vl_lab.runner

    asked = {}

    def run_plan(plan, **kw):
        asked['jobs'] = kw['jobs']
        return []

    monkeypatch.setattr(vl_lab.runner, 'read_plan', lambda path: {})
    monkeypatch.setattr(vl_lab.runner, 'plan_corpora', lambda *a, **kw: {})
    monkeypatch.setattr(vl_lab.runner, 'run_plan', run_plan)
    monkeypatch.setattr(vl_lab.report, 'build_report', lambda **kw: tmp_path / 'index.html')
    (tmp_path / 'plan.yaml').write_text('experiments: []\n')

    def go(capsys, *args, cpus=32, available=8e9):
        monkeypatch.setattr(executor, 'cpu_count', lambda: cpus)
        monkeypatch.setattr(executor, 'memory_available', lambda: available)
        assert main(['report', '--plan', str(tmp_path / 'plan.yaml'), '--out', str(tmp_path / 'r'), *args]) == 0
        return asked['jobs'], capsys.readouterr().out

    return go


def test_a_machine_with_more_cores_than_memory_for_runs_runs_fewer_and_says_so(report, capsys):
    jobs, out = report(capsys, cpus=32, available=8e9)
    said = [line for line in out.splitlines() if line.startswith('--jobs')]
    assert jobs == 5 == int((8e9 - executor.RESERVE_BYTES) // RUN_BYTES), jobs
    assert said == [
        '--jobs 5: memory for 5 runs (8.0 GB available, about 1.3 GB a run and 0.5 GB kept for vl-lab), not the 32 CPUs'
    ], out
    print(said[0])


def test_with_plenty_of_memory_every_cpu_runs_a_run_and_nothing_is_said(report, capsys):
    jobs, out = report(capsys, cpus=32, available=256e9)
    assert jobs == 32 and '--jobs' not in out, (jobs, out)
    jobs, out = report(capsys, cpus=6, available=None)  # memory that cannot be read: the CPUs decide
    assert jobs == 6 and '--jobs' not in out, (jobs, out)


def test_an_explicit_jobs_is_obeyed_whatever_the_memory(report, capsys):
    jobs, out = report(capsys, '--jobs', '20', cpus=32, available=2e9)
    assert jobs == 20 and '--jobs' not in out, (jobs, out)


def fake_machine(root, mem_available_kb, v2=None, v1=None):
    "A /proc and /sys/fs/cgroup: MemAvailable, and a cgroup (limit, usage, inactive file bytes) of v2 or v1."
    proc, cg = root / 'proc', root / 'cgroup'
    (proc / 'self').mkdir(parents=True)
    (proc / 'meminfo').write_text(f'MemTotal:       999999999 kB\nMemAvailable:   {mem_available_kb} kB\n')
    (proc / 'self' / 'cgroup').write_text('12:memory:/lab/job\n0::/lab/job\n')
    for group, d, names, stat in (
        (v2, cg / 'lab', ('memory.max', 'memory.current'), 'inactive_file'),  # the parent's limit binds the job
        (v1, cg / 'memory', ('memory.limit_in_bytes', 'memory.usage_in_bytes'), 'total_inactive_file'),
    ):
        if group:
            d.mkdir(parents=True)
            for name, v in zip(names, group):
                (d / name).write_text(f'{v}\n')
            (d / 'memory.stat').write_text(f'anon 1\n{stat} {group[2]}\n')
    return proc, cg


def test_a_cgroup_limit_is_the_memory_available_where_it_leaves_less(tmp_path):
    gb = 10**9
    assert memory_available(*fake_machine(tmp_path / 'a', 31_250_000)) == 32 * gb  # MemAvailable alone
    v2 = fake_machine(tmp_path / 'b', 31_250_000, v2=(8 * gb, 3 * gb, 1 * gb))
    assert memory_available(*v2) == 6 * gb  # 8 GB limit, 3 GB used of which 1 GB is inactive file cache
    v1 = fake_machine(tmp_path / 'c', 31_250_000, v1=(4 * gb, 1 * gb, 0))
    assert memory_available(*v1) == 3 * gb
    unlimited = fake_machine(tmp_path / 'd', 31_250_000, v1=(9223372036854771712, gb, 0), v2=('max', gb, 0))
    assert memory_available(*unlimited) == 32 * gb
    assert memory_available(tmp_path / 'none', tmp_path / 'none') is None  # not Linux: nothing to read
    assert fit_jobs(32, memory_available(*v2))[0] == 4  # (6 - 0.5) / 1.3


def test_this_machine_gets_a_number_it_can_hold():
    jobs, why = default_jobs()
    assert 1 <= jobs <= executor.cpu_count(), (jobs, why)
    print(executor.cpu_count(), 'CPUs,', memory_available(), 'bytes available:', jobs, why or '(the CPUs decide)')


def test_the_help_says_how_the_default_is_chosen():
    r = run_cli('report', '--help', check=True)
    text = ' '.join(r.stdout.split())
    m = re.search(r'--jobs JOBS (.*?) --executor', text)
    assert m and m[1] == (
        'runs executed in parallel, one thread each (default: one per CPU, fewer where the memory available holds '
        'fewer runs of about 1.3 GB, and a line says so)'
    ), text
