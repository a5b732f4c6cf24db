"""What `scalerl plot` draws of a long run, and how it writes the file."""

from pathlib import Path

import numpy as np
import pytest

from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.data import clean_curve
from scalerl.curvefit.errors import InputError
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.plot import plot_fits


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
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


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


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
