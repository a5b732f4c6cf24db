"""Limits on the numbers a user gives the fit, checked where the CLI parses them: no numpy here.

MAX_BOUND: the largest metric bound (--bound, [curvefit] bound). Pass rates are 1, percentages 100 and scores
rarely past 1e4; past about 1e154 the fit's squared errors overflow float64 (an internal error at --bound 1e200, an
all-NaN grid at 1e300), so the limit is set far below that and far above any metric.

MAX_X_DECADES: the widest span of a curve's compute axis, from its smallest positive value to its largest. Steps
span about 5 decades and FLOPs 6; the power law's grid squares (C / C_ref)^-B with B up to 5, which overflows past
about 60 decades (an internal error at 140, raw numpy warnings from about 60).
"""

MAX_BOUND = 1e9
MAX_X_DECADES = 40.0
