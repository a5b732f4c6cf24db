"""The public curves of bench/curves (development data for bench/bench_forecast.py) read with scalerl's own
reader, one run per curve, each long enough to backtest, and every file has its source in the README."""

from pathlib import Path

import numpy as np
import pytest

from scalerl.curvefit.readers import ReadOptions, read_sources

CURVES = Path(__file__).resolve().parents[2] / "bench" / "curves"
FILES = sorted(CURVES.glob("*.csv"))


def test_the_folder_has_curves():
    assert len(FILES) >= 3


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_reads_and_every_run_is_usable(path):
    curves = read_sources([path], ReadOptions())
    assert curves, path.name
    for c in curves:
        assert len(c) >= 10, (path.name, c.name)
        # The reader sorts unsorted rows and averages duplicate x, saying so: a file as collected has neither.
        assert c.warnings == [], (path.name, c.name, c.warnings)
        assert np.all((c.y >= 0) & (c.y <= 1)), (path.name, c.name)


def test_the_readme_names_each_file_with_its_licence():
    readme = (CURVES / "README.md").read_text()
    for path in FILES:
        assert path.name in readme, path.name
    for licence in ("Apache-2.0", "MIT"):
        assert licence in readme
