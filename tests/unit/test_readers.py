"""Every source format, and the messy input the readers must tolerate."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from scalerl.curvefit.errors import InputError
from scalerl.curvefit.readers import ReadOptions, read_sources

DATA = Path(__file__).resolve().parents[1] / "data"


def write_run_dir(path, points, truncated_tail=False):
    path.mkdir()
    lines = [
        json.dumps({"kind": "train", "step": s, "gpu_hours": g, "time_s": g * 10, "loss": 0.1}) for s, g, _ in points
    ]
    lines += [
        json.dumps({"kind": "eval", "step": s, "gpu_hours": g, "time_s": g * 10, "pass_rate": r, "n_samples": 64})
        for s, g, r in points
    ]
    text = "\n".join(lines) + "\n"
    if truncated_tail:
        text += '{"kind": "eval", "step": 99, "gpu_ho'
    (path / "metrics.jsonl").write_text(text)
    return path


def test_run_dir_reads_eval_lines_and_tolerates_truncated_tail(tmp_path):
    run = write_run_dir(tmp_path / "run1", [(0, 0.0, 0.2), (10, 1.0, 0.3), (20, 2.0, 0.4)], truncated_tail=True)
    (c,) = read_sources([run], ReadOptions())
    assert c.name == "run1" and c.x_label == "gpu_hours"
    assert c.x.tolist() == [0.0, 1.0, 2.0] and c.y.tolist() == [0.2, 0.3, 0.4]
    assert any("truncated last line" in w for w in c.warnings)


def test_jsonl_bad_middle_line_names_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"x": 1, "y": 0.1}\n{"x": 2, "y"\n{"x": 3, "y": 0.3}\n')
    with pytest.raises(InputError, match=r"m\.jsonl:2: invalid JSON"):
        read_sources([p], ReadOptions())


def test_csv_nan_unsorted_duplicates(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("step,acc\n3,0.3\n1,0.1\nnan,0.5\n2,inf\n1,0.3\n4,0.4\n")
    (c,) = read_sources([p], ReadOptions(x="step", y="acc"))
    assert c.x.tolist() == [1.0, 3.0, 4.0]
    assert c.y == pytest.approx([0.2, 0.3, 0.4])  # duplicate x=1 averaged
    text = " ".join(c.warnings)
    assert "NaN or inf" in text and "sorted" in text and "duplicate" in text


def test_csv_with_run_column_splits_runs(data_dir):
    curves = read_sources([data_dir / "deepgrpo_grpo_scale_rollout_subset.csv"], ReadOptions())
    assert len(curves) == 2
    assert all(len(c) > 800 and np.all(np.diff(c.x) > 0) for c in curves)


def test_wandb_export_ignores_min_max_copies(tmp_path):
    p = tmp_path / "wandb.csv"
    p.write_text(
        '"Step","runA - val/acc","runA - val/acc__MIN","runA - val/acc__MAX","runB - val/acc"\n'
        '"0","0.1","0.0","0.2","0.15"\n"10","0.2","0.1","0.3",""\n"20","0.3","0.2","0.4","0.35"\n'
    )
    curves = {c.name: c for c in read_sources([p], ReadOptions())}
    assert set(curves) == {"runA", "runB"}
    assert curves["runA"].y.tolist() == [0.1, 0.2, 0.3]
    assert curves["runB"].x.tolist() == [0.0, 20.0]  # the blank cell is a step runB did not log


def test_wandb_export_run_names_with_the_separator(tmp_path):
    # W&B display names are free text: "GRPO - lr 1e-6" is one run, and val/acc the one metric of the export.
    p = tmp_path / "wandb.csv"
    p.write_text(
        '"Step","GRPO - lr 1e-6 - val/acc","GRPO - lr 1e-6 - val/acc__MIN","GRPO - lr 2e-6 - val/acc"\n'
        '"0","0.1","0.0","0.15"\n"10","0.2","0.1","0.25"\n'
    )
    for opts in (ReadOptions(), ReadOptions(y="val/acc")):
        curves = {c.name: c for c in read_sources([p], opts)}
        assert set(curves) == {"GRPO - lr 1e-6", "GRPO - lr 2e-6"}
        assert curves["GRPO - lr 2e-6"].y.tolist() == [0.15, 0.25]
        assert {c.y_label for c in curves.values()} == {"val/acc"}


def test_hf_trainer_state(tmp_path):
    p = tmp_path / "trainer_state.json"
    history = [
        {"step": 1, "loss": 2.0},
        {"step": 5, "eval_accuracy": 0.2, "eval_loss": 1.0},
        {"step": 10, "eval_accuracy": 0.4, "eval_loss": 0.9},
    ]
    p.write_text(json.dumps({"log_history": history, "global_step": 10}))
    (c,) = read_sources([p], ReadOptions())
    assert c.y_label == "eval_accuracy" and c.x.tolist() == [5.0, 10.0] and c.y.tolist() == [0.2, 0.4]


@pytest.mark.parametrize(
    "content, opts, message",
    [
        ("x,y\n1,0.1\n2,abc\n", ReadOptions(), r"c\.csv:3: 'y' is not a number"),
        ("x,y\n1,0.1\n", ReadOptions(y="acc"), r"unknown column 'acc' for --y"),
        ("a,b\n1,0.1\n", ReadOptions(), r"no column for --x"),
        ("", ReadOptions(), r"empty file"),
    ],
)
def test_bad_csv_errors_name_the_problem(tmp_path, content, opts, message):
    p = tmp_path / "c.csv"
    p.write_text(content)
    with pytest.raises(InputError, match=message):
        read_sources([p], opts)


def test_missing_source(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_sources([tmp_path / "nope.csv"], ReadOptions())
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="not a run directory"):
        read_sources([tmp_path / "emptydir"], ReadOptions())


def test_sample_counts_from_run_dir_column_and_flag(tmp_path):
    """The binomial noise needs each evaluation's sample count: scalerl's eval lines carry n_samples; external files
    name a column (eval_samples by default, --samples-col otherwise) or give one count (--samples)."""
    run = write_run_dir(tmp_path / "run1", [(0, 0.0, 0.2), (10, 1.0, 0.3), (20, 2.0, 0.4)])
    (c,) = read_sources([run], ReadOptions())
    assert c.samples.tolist() == [64, 64, 64]
    p = tmp_path / "ext.csv"
    p.write_text("step,pass_rate,eval_samples,k\n2,0.3,400,4\n1,0.2,100,4\n")
    (c,) = read_sources([p], ReadOptions())
    assert c.x.tolist() == [1, 2] and c.samples.tolist() == [100, 400]  # sorted with their points
    (c,) = read_sources([p], ReadOptions(samples_col="k"))
    assert c.samples.tolist() == [4, 4]
    (c,) = read_sources([data_file(tmp_path)], ReadOptions(samples=250))
    assert c.samples.tolist() == [250, 250]
    (c,) = read_sources([data_file(tmp_path)], ReadOptions())
    assert c.samples is None  # unknown: the noise is estimated from the residuals
    # --samples is for files without counts: over a file's own column it would hide a mistake, and it is refused.
    with pytest.raises(InputError, match="ext: its source gives sample counts"):
        read_sources([p], ReadOptions(samples=250))
    with pytest.raises(InputError, match="run1: its source gives sample counts"):
        read_sources([run], ReadOptions(samples=250))


def test_blank_sample_count_makes_the_noise_unknown(tmp_path):
    p = tmp_path / "gap.csv"
    p.write_text("step,pass_rate,eval_samples\n1,0.2,100\n2,0.3,\n")
    (c,) = read_sources([p], ReadOptions())
    assert c.samples is None and any("sample counts missing" in w for w in c.warnings)
    p.write_text("step,pass_rate,eval_samples\n1,0.2,100\n2,0.3,-5\n")
    with pytest.raises(InputError, match="negative sample count"):
        read_sources([p], ReadOptions())


def data_file(tmp_path):
    p = tmp_path / "plain.csv"
    p.write_text("step,pass_rate\n1,0.2\n2,0.3\n")
    return p


MIXED_JSONL = [
    {"run": "a", "step": 10, "pass_rate": 0.21, "loss": 1.5, "cfg": {"lr": 1e-6}, "tags": ["x"]},
    {"run": 3, "step": 10, "pass_rate": "0.19", "ok": True},  # a run named 3, a number written as a string
    {"run": "a", "step": 5, "pass_rate": 0.2, "recipe": "slow"},  # unsorted steps, sorted with a warning
    {"run": "a", "step": 20.5, "pass_rate": float("nan")},  # skipped with a warning
    {"run": 3, "step": 20, "pass_rate": "", "recipe": "fast"},  # a blank metric: the row is skipped
    {"run": 3, "step": 30, "pass_rate": 0.4, "eval_samples": 128},  # a count known on some rows only
    {"run": "a", "step": 30, "pass_rate": 0.45, "eval_samples": 64, "extra": None},
    {"run": "a", "step": 30, "pass_rate": 0.47, "eval_samples": 64},  # a duplicate step, averaged
    {"run": 3, "step": 2**60, "pass_rate": 0.5},  # an int beyond a float's exact range
]


def _dict_rows_reference(monkeypatch, path, opts):
    """What the reader gave when it held every line as a dict: read_run_dir's path, still on dicts."""
    from scalerl.curvefit import readers

    rows, warnings = readers._read_jsonl(path)
    if opts.run_col is None and opts.y != "run" and any("run" in r for _, r in rows):
        opts = ReadOptions(**{**vars(opts), "run_col": "run"})
    try:
        return readers._rows_to_curves(rows, path, opts, default_name=path.stem, warnings=warnings, sparse=True)
    except InputError as e:
        return str(e)


@pytest.mark.parametrize(
    "opts",
    [ReadOptions(), ReadOptions(group_col="recipe"), ReadOptions(x="step", y="pass_rate", run_col="run")],
    ids=["defaults", "group-by", "named"],
)
def test_generic_jsonl_is_read_into_columns_with_the_dict_rows_results(tmp_path, monkeypatch, opts):
    """A million-line JSONL held as dicts peaked near 1 GB; it is now read into columns of the keys a curve can
    come from. Same curves as the dict rows gave (names, points, counts, groups, warnings), never through them."""
    from scalerl.curvefit import readers

    p = tmp_path / "mixed.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in MIXED_JSONL) + '{"run": "a", "step": 4')  # truncated tail
    want = _dict_rows_reference(monkeypatch, p, opts)
    monkeypatch.setattr(readers, "_read_jsonl", lambda *a, **k: pytest.fail("generic JSONL read as dict rows"))
    got = read_sources([p], opts)
    assert [c.name for c in got] == [c.name for c in want] == ["a", "3"]
    for g, w in zip(got, want):
        assert (g.x_label, g.y_label, g.group, g.warnings) == (w.x_label, w.y_label, w.group, w.warnings)
        assert np.array_equal(g.x, w.x) and np.array_equal(g.y, w.y)
        assert (g.samples is None) == (w.samples is None)
        if g.samples is not None:
            assert np.array_equal(g.samples, w.samples)
    a, three = got
    assert np.array_equal(a.x, [5, 10, 30]) and np.allclose(a.y, [0.2, 0.21, 0.46]) and a.samples is None
    assert np.array_equal(three.x, [10, 30, 2.0**60]) and np.allclose(three.y, [0.19, 0.4, 0.5])
    assert "ignored a truncated last line (mixed.jsonl:10)" in a.warnings
    if opts.group_col:
        assert (a.group, three.group) == ("", "")  # each run's first row, as before: neither has a recipe


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"run": "a", "step": "three", "pass_rate": 0.3}, r"mixed\.jsonl:3: 'step' is not a number \('three'\)"),
        ({"run": None, "step": 3, "pass_rate": 0.3}, r"mixed\.jsonl:3: blank run name in 'run'"),
        ({"run": "a", "step": [3], "pass_rate": 0.3}, r"mixed\.jsonl:3: 'step' is not a number \(\[3\]\)"),
        ({"run": "a", "step": 3, "pass_rate": 0.3, "n_samples": -1}, r"mixed\.jsonl:3: 'n_samples' is a negative"),
    ],
)
def test_generic_jsonl_errors_name_the_line_as_before(tmp_path, monkeypatch, bad, message):
    p = tmp_path / "mixed.jsonl"
    rows = [{"run": "a", "step": 1, "pass_rate": 0.2}, {"run": "b", "step": 2, "pass_rate": 0.25}, bad]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert re.search(message, _dict_rows_reference(monkeypatch, p, ReadOptions()))
    with pytest.raises(InputError, match=message):
        read_sources([p], ReadOptions())


def test_jsonl_lines_without_the_metric_are_skipped_but_a_file_without_it_is_refused(tmp_path):
    """A step log writes its eval metric on some lines only (train lines lack it): those lines are skipped, as a
    CSV's blank cell is ("mixed.jsonl:1: missing 'val/...'" refused every such log). A file where no line has the
    metric, or with a line that is not JSON, is still refused in one line naming it."""
    p = tmp_path / "mixed.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 12)]
    rows += [{"step": s, "pass_rate": 0.2 + 0.01 * s} for s in (2, 4, 6, 8, 10)]
    rows.sort(key=lambda r: r["step"])
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (c,) = read_sources([p], ReadOptions())
    assert c.x.tolist() == [2, 4, 6, 8, 10] and np.allclose(c.y, [0.22, 0.24, 0.26, 0.28, 0.3])
    assert c.warnings == []
    p.write_text("".join(json.dumps(r) + "\n" for r in rows if "loss" in r))
    with pytest.raises(InputError, match=r"mixed\.jsonl: no column for --y"):
        read_sources([p], ReadOptions())
    with pytest.raises(InputError, match=r"mixed\.jsonl: unknown column 'pass_rate' for --y"):
        read_sources([p], ReadOptions(y="pass_rate"))
    p.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + "not json\n" + json.dumps(rows[5]) + "\n")
    with pytest.raises(InputError, match=r"mixed\.jsonl:4: invalid JSON"):
        read_sources([p], ReadOptions())


def test_verl_file_logger_jsonl(tmp_path):
    """verl's file logger (verl/utils/tracking.py FileLogger, trainer.logger=['file']) writes
    {"step": N, "data": {...}} a step; the validation metrics come every test_freq steps and at step 0 (validation
    before training, a line of them alone). The fixture holds the real Deep-GRPO GRPO-n64 validation scores of
    deepgrpo_grpo_scale_rollout_subset.csv (a verl run) in that format, test_freq 5."""
    p = DATA / "verl_file_logger_gsm8k.jsonl"
    (c,) = read_sources([p], ReadOptions())
    assert (c.name, c.x_label, c.y_label) == ("verl_file_logger_gsm8k", "step", "val-core/GSM8K/reward/mean@1")
    assert c.x.tolist() == list(range(0, 201, 5)) and c.warnings == []
    (ref,) = [
        r for r in read_sources([DATA / "deepgrpo_grpo_scale_rollout_subset.csv"], ReadOptions()) if "n64" in r.name
    ]
    assert np.array_equal(c.y, ref.y[ref.x <= 200])
    (t,) = read_sources([p], ReadOptions(y="critic/score/mean"))  # any metric of the nested lines, by name
    assert t.x.tolist() == list(range(1, 201))
    # Several validation metrics: one must be chosen, and they are named.
    q = tmp_path / "two.jsonl"
    q.write_text(
        json.dumps({"step": 0, "data": {"val-core/a/acc/mean@1": 0.1, "val-core/b/acc/mean@1": 0.2}})
        + "\n"
        + json.dumps({"step": 1, "data": {"actor/pg_loss": 0.1}})
        + "\n"
    )
    with pytest.raises(InputError, match=r"several validation metrics.*val-core/a/acc/mean@1, val-core/b"):
        read_sources([q], ReadOptions())
