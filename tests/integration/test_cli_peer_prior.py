"""`--prior peers` as a user runs it: the JSON names the prior, a backtest learns it from the peers' first parts
only, and the settings where it cannot take effect are refused in one line."""

import json

import numpy as np
import pytest

from scalerl.curvefit.backtest import backtest, cut_heads
from scalerl.curvefit.corpus import peer_priors
from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.fit import FitOptions
from scalerl.curvefit.priors import DEFAULT_PRIOR
from scalerl.curvefit.readers import ReadOptions, read_sources


@pytest.fixture
def sweep_csv(tmp_path):
    rng = np.random.default_rng(3)
    rows = ["run,step,pass_rate"]
    x = np.linspace(20, 2000, 50)
    for i, (A, B) in enumerate(((0.6, 3.0), (0.65, 3.5), (0.7, 2.5), (0.62, 3.0))):
        y = np.clip(sigmoid(x, A, B, 500.0, 0.2) + rng.normal(0, 0.01, len(x)), 0, 1)
        rows += [f"r{i},{a},{b:.4f}" for a, b in zip(x, y)]
    p = tmp_path / "sweep.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def test_the_json_says_which_prior_each_fit_used(cli, sweep_csv):
    peers = json.loads(cli("fit", sweep_csv, "--prior", "peers", "--json", "--n-boot", "50").stdout)
    corpus = json.loads(cli("fit", sweep_csv, "--json", "--n-boot", "50").stdout)
    none = json.loads(cli("fit", sweep_csv, "--prior", "none", "--json", "--n-boot", "50").stdout)
    assert [r["prior"]["source"] for r in peers["runs"]] == ["peers"] * 4
    assert [r["prior"]["n_runs"] for r in peers["runs"]] == [3] * 4
    assert corpus["runs"][0]["prior"]["source"] == "corpus"
    assert corpus["runs"][0]["prior"]["log_b"] == list(DEFAULT_PRIOR.log_b)
    assert none["runs"][0]["prior"] is None
    fc = cli("forecast", sweep_csv, "--prior", "peers", "--budget", "4000", "--json", "--n-boot", "50")
    fc = json.loads(fc.stdout)
    assert [r["prior"] for r in fc["runs"]] == [r["prior"] for r in peers["runs"]]
    # The peers are steep (B 2.5-3.5): their prior on log B sits well above the corpus's.
    assert peers["runs"][0]["prior"]["log_b"][0] > DEFAULT_PRIOR.log_b[0] + 0.4


def test_a_backtest_learns_the_peers_prior_from_their_first_parts_only(cli, sweep_csv):
    """The later points of the other runs are the future too: the backtest's prior must not see them."""
    r = cli("fit", sweep_csv, "--prior", "peers", "--backtest", "0.3", "--json", "--n-boot", "50", "--seed", "0")
    assert r.returncode == 0, r.stderr
    got = [run["backtest"]["mae"] for run in json.loads(r.stdout)["runs"]]
    runs = read_sources([sweep_csv], ReadOptions())
    heads = [cut_heads([c], 0.3)[1] for c in runs]
    whole = [[c] for c in runs]
    opts = FitOptions(n_boot=50, seed=0)

    def maes(groups):
        return [backtest([c], FitOptions(**{**opts.__dict__, "prior": p}), 0.3)["mae"]
                for c, p in zip(runs, peer_priors(groups, DEFAULT_PRIOR))]  # fmt: skip

    assert got == pytest.approx(maes(heads), rel=1e-9)
    assert got != pytest.approx(maes(whole), rel=1e-6)  # learned on the whole peers, the forecasts differ


@pytest.mark.parametrize(
    "args, offender",
    [
        (("compare", "{f}", "--prior", "peers"), "compare fits them apart"),
        (("fit", "{f}", "--prior", "peers", "--group"), "one pooled fit"),
        (("fit", "{f}", "--prior", "peers", "--group-glob", "a=r[01]", "--group-glob", "b=r[23]"), "2 fits"),
    ],
)
def test_where_the_peers_prior_cannot_take_effect_it_is_refused(cli, sweep_csv, args, offender):
    r = cli(*[a.format(f=sweep_csv) for a in args])
    assert r.returncode == 2
    assert r.stdout == ""
    assert offender in r.stderr and "--prior peers" in r.stderr and len(r.stderr.strip().splitlines()) == 1
