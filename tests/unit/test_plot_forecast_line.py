"""The dotted line `scalerl plot` draws beyond the data is the point forecast its band is centred on, the value
`scalerl forecast` prints. It was the sigmoid alone: where the forecast leans on the recent level, the line left
its own band (8 of 652 run x budget checks on the development curves)."""

from pathlib import Path

import numpy as np

from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.plot import _draw
from scalerl.curvefit.readers import ReadOptions, read_sources

DATA = Path(__file__).parents[1] / "data" / "spurious_rewards_subset.csv"


def test_the_extrapolation_line_is_the_forecast_inside_its_band():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A format reward: the run peaks and sags at its end, so beyond the data the forecast leans on the recent level.
    (run,) = [c for c in read_sources([DATA], ReadOptions()) if c.name == "Qwen2.5-Math-7B_format"]
    fit = fit_curves([run], FitOptions(n_boot=200))
    fig, ax = plt.subplots()
    try:
        _draw(ax, fit, "C0", 3 * fit.x_last, False)
        (dotted,) = [ln for ln in ax.lines if ln.get_linestyle() == ":" and ln.get_linewidth() == 2]
        x, y = (np.asarray(v, float) for v in dotted.get_data())
    finally:
        plt.close(fig)
    beyond = x > fit.x_last
    assert beyond.any() and fit.average is not None and fit.average.weight("level") > 0.5
    assert np.allclose(y, fit.forecast(x))
    lo, hi = fit.band(x[beyond])
    assert np.all(lo - 1e-9 <= y[beyond]) and np.all(y[beyond] <= hi + 1e-9)
