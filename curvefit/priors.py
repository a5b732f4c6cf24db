"""Empirical-Bayes priors on the sigmoid's shape: B, and the headroom h = (A - R0) / (bound - R0).

A run cut before its bend leaves A and B nearly free: the data fit as well with a ceiling at the bound as with
one just above the last point, and least squares picks whichever edge the noise favours. Across many runs,
though, B and the share of the possible gain that RL realises are not arbitrary; their spread over a corpus of
fitted runs is a prior that settles the unidentified directions and is outvoted wherever the data speak.

The prior enters as two extra residuals, (log B - mu) / sd and (h - mu) / sd, beside the data residuals scaled by
their noise (sigma^2 times the bootstrap block length, for the autocorrelation along a run). `corpus.learn_priors`
fits each corpus run without a prior and takes robust moments (median, 1.4826 x MAD); the bench learns them leaving
out the source it scores (bench/bench_forecast.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# Where a fit's shape prior comes from (`--prior`): the other runs fitted alongside (corpus.peer_priors), the
# development corpus (DEFAULT_PRIOR), or nowhere (plain least squares).
PEERS, CORPUS, NO_PRIOR = "peers", "corpus", "none"
PRIORS = (PEERS, CORPUS, NO_PRIOR)


@dataclass(frozen=True)
class ShapePrior:
    log_b: tuple[float, float]  # (mean, sd) of log B
    headroom: tuple[float, float]  # (mean, sd) of (A - R0) / (bound - R0)
    n_runs: int = 0
    source: str = CORPUS  # PEERS: learned on the runs fitted alongside (what fit --json reports)


# learn_priors on the 131 development runs of ../shared/data/curves and bench/curves (bench/bench_forecast.py's
# corpus, seven sources): B around 1.52 (a factor 2.7 either way), RL realising about 42% of the possible gain (sd 29
# points). On the first four sources alone (50 runs) it was B 1.24 (x 1.7) and 39% (sd 22): the three sources added
# in issue 24's third round widened it, and a prior learned on fewer sources claims more than it knows.
DEFAULT_PRIOR = ShapePrior(log_b=(0.418, 0.997), headroom=(0.423, 0.292), n_runs=131)

SD_FLOOR = (0.3, 0.1)  # a corpus of similar runs must not make the prior a point mass
