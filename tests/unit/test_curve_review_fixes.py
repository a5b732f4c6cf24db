"""Review of the curve tools (fit, readers, plot, compare): what they refuse and warn must be true."""

from pathlib import Path

import numpy as np
import pytest

from scalerl.curvefit.errors import InputError
from scalerl.curvefit.readers import ReadOptions, read_sources


def _write(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def _rise(n=61):
    x = np.arange(n) * 5.0
    y = 0.2 + 0.5 / (1.0 + (400.0 / np.maximum(x, 1e-9)) ** 1.2)
    return x, y


def test_samples_is_refused_for_a_file_whose_count_column_has_a_blank_cell(tmp_path):
    x, y = _rise()
    counts = ["500"] * len(x)
    counts[3] = ""  # one blank cell: the run's counts become unknown, but the file still has its own
    path = _write(tmp_path / "samp.csv", "x,y,eval_samples", zip(x, np.round(y, 4), counts))
    with pytest.raises(InputError, match="its source gives sample counts .*blank on some rows.*drop --samples"):
        read_sources([path], ReadOptions(samples=100))
    (c,) = read_sources([path], ReadOptions())
    assert c.samples is None and c.counted
    # a file without a count column still takes --samples
    bare = _write(tmp_path / "bare.csv", "x,y", zip(x, np.round(y, 4)))
    (c,) = read_sources([bare], ReadOptions(samples=100))
    assert c.samples is not None and np.all(c.samples == 100)
