"""Hand-checked values of the curve forms."""

import numpy as np
import pytest

from scalerl.curvefit.curves import power_law, sigmoid, sigmoid_inverse


def test_sigmoid_hand_values():
    # A=0.8, B=1, C_mid=10, R0=0.2: at C=C_mid halfway; at C=1: 0.2 + 0.6/(1+10) ; at C=100: 0.2 + 0.6/1.1
    r = sigmoid([10.0, 1.0, 100.0], 0.8, 1.0, 10.0, 0.2)
    assert r == pytest.approx([0.5, 0.2 + 0.6 / 11, 0.2 + 0.6 / 1.1])


def test_sigmoid_limits():
    assert sigmoid(0.0, 0.8, 2.0, 10.0, 0.2) == pytest.approx(0.2)
    assert sigmoid(1e30, 0.8, 2.0, 10.0, 0.2) == pytest.approx(0.8)
    # B sets the steepness: with B=2 at C = 2*C_mid the share is 1/(1+1/4) = 0.8
    assert sigmoid(20.0, 1.0, 2.0, 10.0, 0.0) == pytest.approx(0.8)


def test_sigmoid_inverse_round_trip_and_edges():
    c = np.array([0.5, 3.0, 10.0, 590.0])
    r = sigmoid(c, 0.8, 1.0, 10.0, 0.2)
    assert sigmoid_inverse(r, 0.8, 1.0, 10.0, 0.2) == pytest.approx(c)
    # 0.79 is 59/60 of the gain: (60/59 - 1)^-1 = 59 -> C = 590
    assert sigmoid_inverse(0.79, 0.8, 1.0, 10.0, 0.2) == pytest.approx(590.0)
    assert sigmoid_inverse(0.8, 0.8, 1.0, 10.0, 0.2) == np.inf
    assert sigmoid_inverse(0.9, 0.8, 1.0, 10.0, 0.2) == np.inf
    assert sigmoid_inverse(0.1, 0.8, 1.0, 10.0, 0.2) == 0.0


def test_power_law_hand_values():
    # 1 - 2 / 4^0.5 = 0
    assert power_law(4.0, 1.0, 2.0, 0.5) == pytest.approx(0.0)
    assert power_law(100.0, 0.9, 1.0, 1.0) == pytest.approx(0.89)
