"""What `scalerl plot` draws of a long run, and how it writes the file."""

from pathlib import Path

import numpy as np
import pytest

from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.data import clean_curve
from scalerl.curvefit.errors import InputError
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.plot import plot_fits
from scalerl.curvefit.thin import MAX_DRAWN_POINTS, thin_for_drawing
from scalerl.shared.run_dir import current_umask


def test_thin_for_drawing_bounds_markers_and_keeps_the_shape():
    x = np.linspace(1.0, 50000.0, 100_000)
    y = sigmoid(x, 0.61, 1.5, 3000.0, 0.2)
    short_x, short_y = thin_for_drawing(x[:500], y[:500])
    assert np.array_equal(short_x, x[:500]) and np.array_equal(short_y, y[:500])  # short runs drawn as they are
    tx, ty = thin_for_drawing(x, y)
    assert len(tx) == len(ty) == MAX_DRAWN_POINTS
    assert np.all(np.diff(tx) > 0) and tx[0] >= x[0] and tx[-1] <= x[-1]
    assert np.max(np.abs(ty - sigmoid(tx, 0.61, 1.5, 3000.0, 0.2))) < 0.002  # bin means lie on the curve


def test_thin_for_drawing_sorts_pooled_seeds_before_binning():
    """Pooled seeds come one after the other, so consecutive points jump back in compute at each seed's start:
    binned unsorted, a bin would average the end of one seed with the start of the next."""
    x = np.linspace(1.0, 1000.0, 3000)
    xs, ys = np.concatenate([x, x]), np.concatenate([x / 1000.0, x / 1000.0])
    tx, ty = thin_for_drawing(xs, ys, max_points=100)
    assert np.all(np.diff(tx) >= 0) and np.max(np.abs(ty - tx / 1000.0)) < 0.01


@pytest.fixture(scope="module")
def fit():
    x = np.linspace(50.0, 20000.0, 200)
    curve = clean_curve("run", x, sigmoid(x, 0.6, 1.5, 3000.0, 0.2), "gpu_hours", "pass_rate")
    return fit_curves([curve], FitOptions(n_boot=50))


def test_plot_leaves_another_writers_temporary_file_alone(fit, tmp_path):
    """The temporary name was fixed (.fig.tmp.svg): a second plot to the same -o wrote into the first one's file,
    renamed it away or deleted it under it. Now each writer has its own name, and only its own is removed."""
    out = tmp_path / "fig.svg"
    other = tmp_path / ".fig.tmp.svg"  # what a concurrent plot of the old code was writing
    other.write_text("another plot, half written")
    plot_fits([fit], out)
    assert other.read_text() == "another plot, half written"
    assert out.read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fig.tmp.svg", "fig.svg"]
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600


def test_plot_removes_its_temporary_file_when_writing_fails(fit, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full_disk(self, fname, **kw):
        if hasattr(fname, "write"):
            fname.write(b"<?xml half")
        else:
            Path(fname).write_bytes(b"<?xml half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    out = tmp_path / "fig.svg"
    with pytest.raises(InputError, match="fig.svg: cannot write the plot .No space left on device"):
        plot_fits([fit], out)
    assert list(tmp_path.iterdir()) == []
