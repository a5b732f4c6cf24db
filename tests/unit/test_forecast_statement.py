"""`scalerl forecast` says plainly whether the sigmoid beats persistence, and labels a level forecast with its reason
and every weight of the average (issue 24, item 5)."""

import re
import warnings
from pathlib import Path

import numpy as np

from scalerl.curvefit.average import LAST
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.forecast import forecast_budget, honesty_note
from scalerl.curvefit.readers import ReadOptions, read_sources

DATA = Path(__file__).parents[1] / "data" / "cs336_lr_sweep_subset.csv"


def test_level_forecast_names_its_reason_and_weights():
    # The 5e-5 learning rate peaks and declines: its own prefixes forecast better by holding the level.
    (run,) = [c for c in read_sources([DATA], ReadOptions()) if c.name.endswith("5e-5")]
    # A share of the level's weight for the last value (off by default since issue 24's sixth round) is named too.
    fit = fit_curves([run], FitOptions(n_boot=100, persistence=0.8))
    out = forecast_budget(fit, 2 * fit.x_last)
    assert out["basis"] == "recent level" and out["persistence"]["sigmoid_beats_persistence"] is False
    assert "does not beat persistence" in out["persistence"]["statement"]
    note = honesty_note(fit)
    assert note is not None and note.startswith("level forecast: the sigmoid does not beat persistence")
    w = fit.average
    assert w.weight(LAST) > 0 and f"the last value {w.weight(LAST):.0%}" in note
    assert f"weight {w.weight('level'):.0%}" in note and f"the sigmoid {w.weight('sigmoid'):.0%}" in note
    assert any(note == m for m in out["warnings"])
    default = fit_curves([run], FitOptions(n_boot=100))
    note = honesty_note(default)
    assert default.average.weight(LAST) == 0 and note is not None and "last value" not in note


def test_far_budget_warnings_say_what_the_interval_allows_for():
    (run,) = [c for c in read_sources([DATA], ReadOptions()) if c.name.endswith("2e-5")]
    selfcal = fit_curves([run], FitOptions(n_boot=100))
    (far,) = [m for m in forecast_budget(selfcal, 1e300)["warnings"] if "beyond the last fitted point" in m]
    assert "wider than the bootstrap's alone" in far
    assert not re.search(r"\d{7}", far), far  # the ratio in exponent form, not 300 digits
    # --interval bootstrap adds nothing for the distance: its warning must not claim a widening.
    boot = fit_curves([run], FitOptions(n_boot=100, interval="bootstrap"))
    (far,) = [m for m in forecast_budget(boot, 1e4 * boot.x_last)["warnings"] if "beyond" in m]
    assert "does not widen with the distance" in far and "bending differently" not in far, far


def test_a_tiny_budget_warns_of_nothing_from_numpy():
    (run,) = [c for c in read_sources([DATA], ReadOptions()) if c.name.endswith("2e-5")]
    fit = fit_curves([run], FitOptions(n_boot=100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the quotient budget / x_last underflowed to 0 and log(0) warned
        out = forecast_budget(fit, 5e-324)
    assert all(np.isfinite(out["ci"]))
