"""The run secret is written whole or not at all, and an empty or cut one is refused naming the file."""

import errno
import os
import stat

import pytest

from scalerl.shared.config import ConfigError
from scalerl.shared.ownership import SECRET_NAME, ensure_secret, read_secret


def test_the_secret_is_made_once_private_and_kept(tmp_path):
    path = ensure_secret(tmp_path)
    token = path.read_text().strip()
    assert path == tmp_path / SECRET_NAME and len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_secret(tmp_path) == path and path.read_text().strip() == token
    assert read_secret(path) == token
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_NAME]  # no temp file left


def test_a_write_that_fails_leaves_no_secret_at_all(tmp_path, monkeypatch):
    """O_EXCL then write: a full disk (or a kill) between them left an empty .secret that every later start
    tripped over, far from here, naming no file."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError):
        ensure_secret(tmp_path)
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert list(tmp_path.iterdir()) == []
    assert len(ensure_secret(tmp_path).read_text().strip()) == 64  # the next start makes it whole


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_secret_is_refused_in_one_line_naming_it(tmp_path, content):
    path = tmp_path / SECRET_NAME
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        ensure_secret(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "delete it" in msg
    assert path.read_text() == content  # not replaced: generators may hold the old one
    with pytest.raises(ConfigError, match=f"{path} is empty"):
        read_secret(path)
