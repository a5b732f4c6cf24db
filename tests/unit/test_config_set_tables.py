"""`--set section.table={...}` merges into the table key by key, as the same table in a config file does: the keys
it does not name keep their defaults (the model's included) and their provenance in `scalerl config show`."""

from scalerl.cli.run_config import SOURCE_BUILTIN, SOURCE_FILE, SOURCE_SET, resolve
from scalerl.shared.config import apply_sets


def test_apply_sets_merges_a_table_into_the_table_there():
    raw = {"trainer": {"optim": {"lr": 2e-5, "eps": 1e-8}}}
    assert apply_sets(raw, ["trainer.optim={weight_decay=0.0}"]) == {
        "trainer": {"optim": {"lr": 2e-5, "eps": 1e-8, "weight_decay": 0.0}}
    }
    # Any other value still replaces, and a table where none was is set as it is.
    assert apply_sets(raw, ["trainer.optim.lr=1e-3"])["trainer"]["optim"]["lr"] == 1e-3
    assert apply_sets({}, ["trainer.optim={lr=1e-3}"]) == {"trainer": {"optim": {"lr": 1e-3}}}


def test_a_set_table_keeps_the_built_in_model_defaults_and_their_sources(tmp_path):
    plain = resolve(None, [], run_dir=str(tmp_path / "a"))[1]
    cfg = resolve(None, ["trainer.optim={weight_decay=0.0}"], run_dir=str(tmp_path / "b"))[1]
    assert cfg.trainer.optim.weight_decay == 0.0
    assert (cfg.trainer.optim.lr, cfg.trainer.optim.eps) == (plain.trainer.optim.lr, plain.trainer.optim.eps)
    assert (cfg.trainer.optim.lr, cfg.trainer.optim.eps) == (2e-5, 1e-8)
    assert cfg.sources[("trainer", "optim", "weight_decay")] == SOURCE_SET
    assert cfg.sources[("trainer", "optim", "lr")] == SOURCE_BUILTIN
    assert cfg.sources[("trainer", "optim", "eps")] == SOURCE_BUILTIN


def test_a_set_table_merges_over_the_file_table_as_the_file_merges_over_the_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[trainer.optim]\nlr = 3e-5\n")
    cfg = resolve(path, ["trainer.optim={weight_decay=0.0}"], run_dir=str(tmp_path / "run"))[1]
    assert (cfg.trainer.optim.lr, cfg.trainer.optim.eps, cfg.trainer.optim.weight_decay) == (3e-5, 1e-8, 0.0)
    assert cfg.sources[("trainer", "optim", "lr")] == SOURCE_FILE
    assert cfg.sources[("trainer", "optim", "eps")] == SOURCE_BUILTIN
