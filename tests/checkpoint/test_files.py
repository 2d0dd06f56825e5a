"""Atomic writes publish files and directories with the usual (umask) permissions, not mkstemp's private ones."""

import os

from bessemer.checkpoint.files import atomic_write_text, publish_dir, temp_dir_for


def test_published_output_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        tmp = temp_dir_for(tmp_path / "ckpt")
        atomic_write_text(tmp / "meta.json", "{}\n")
        publish_dir(tmp, tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "ckpt" / "meta.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ckpt" / "meta.json").read_text() == "{}\n"
