"""Bad input to the command line: one line on stderr, a non-zero exit, never a traceback."""

import pytest

from conftest import one_line_error, run_cli


@pytest.mark.parametrize('value', ['-1', '0', 'ten'])
def test_bad_n_images(tmp_path, value):
    line = one_line_error(run_cli('synth', tmp_path / 'c', '--n-images', value))
    assert '--n-images' in line
    assert not (tmp_path / 'c').exists()


def test_unknown_noise_preset(tmp_path):
    assert 'invalid choice' in one_line_error(run_cli('synth', tmp_path / 'c', '--noise', 'loud'))


def test_bad_rate(tmp_path):
    assert "unknown config key 'noise.nope'" in one_line_error(
        run_cli('synth', tmp_path / 'c', '--rate', 'nope=0.1', '--quiet')
    )
    assert 'must be in [0, 1]' in one_line_error(run_cli('synth', tmp_path / 'c', '--rate', 'short=2', '--quiet'))


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    assert 'cannot write to' in one_line_error(run_cli('synth', blocker / 'corpus', '--n-images', 3, '--quiet'))
    assert 'cannot write to' in one_line_error(run_cli('synth', '/proc/vl_lab_corpus', '--n-images', 3, '--quiet'))
    assert 'it is a file' in one_line_error(run_cli('synth', blocker, '--n-images', 3, '--quiet'))


def test_existing_corpus_is_not_overwritten_silently(tmp_path):
    run_cli('synth', tmp_path / 'c', '--n-images', 3, '--quiet', check=True)
    assert '--overwrite' in one_line_error(run_cli('synth', tmp_path / 'c', '--n-images', 3, '--quiet'))
    run_cli('synth', tmp_path / 'c', '--n-images', 4, '--quiet', '--overwrite', check=True)
    assert len(list((tmp_path / 'c' / 'images').iterdir())) == 4


def test_report_on_missing_corpus(tmp_path):
    assert 'nowhere: no such file or folder' in one_line_error(
        run_cli('report', '--data', tmp_path / 'nowhere', '--out', tmp_path / 'r', cwd=tmp_path)
    )


def test_make_lab_starts_as_root_on_loopback(tmp_path):
    """`make lab` passes --allow-root exactly when the user is root (most ML containers), and always binds 127.0.0.1.
    A stand-in `jupyter` prints the command line `make` would start."""
    import os
    import subprocess

    fake = tmp_path / 'jupyter'
    fake.write_text('#!/bin/sh\necho "jupyter $@"\n')
    fake.chmod(0o755)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        ['make', '-s', '-o', 'venv', 'lab', f'BIN={tmp_path}'], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    args = out.split()
    assert args[:2] == ['jupyter', 'lab'] and '--ip=127.0.0.1' in args
    assert ('--allow-root' in args) == (os.geteuid() == 0)
