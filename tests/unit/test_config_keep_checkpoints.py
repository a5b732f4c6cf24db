"""trainer.keep_checkpoints < 1 is refused naming the key: pruning keeps at least the checkpoint just written, so 0 or
a negative count would silently act as 1."""

import pytest

from scalerl.cli.run_config import resolve
from scalerl.shared.config import ConfigError, from_dict
from scalerl.trainer_service.config import TrainerConfig


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_checkpoints_below_one_is_refused(tmp_path, keep):
    with pytest.raises(ConfigError) as e:
        resolve(None, [f"trainer.keep_checkpoints={keep}"], run_dir=str(tmp_path / "run"))
    assert str(e.value) == "trainer: keep_checkpoints must be >= 1"
    with pytest.raises(ConfigError, match=r"^trainer: keep_checkpoints must be >= 1$"):  # a bare trainer too
        from_dict(TrainerConfig, {"keep_checkpoints": keep}, "trainer.")


def test_keep_checkpoints_of_one_resolves(tmp_path):
    cfg = resolve(None, ["trainer.keep_checkpoints=1"], run_dir=str(tmp_path / "run"))[1]
    assert cfg.trainer.keep_checkpoints == 1
