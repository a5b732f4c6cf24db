"""Defects found by user-acceptance testing of the curve commands, each pinned by the real CLI in a subprocess."""

import json


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_a_run_key_splits_runs_as_a_csv_does(cli, tmp_path):
    """docs/curvefit.md: `--run-col` defaults to `run` when present, for JSONL as for CSV. Without it the seeds of a
    JSONL file were pooled into one curve, their points at the same x averaged (a silent wrong fit)."""
    rows = [
        {"run": f"seed{s}", "step": i, "pass_rate": 0.2 + (0.4 + 0.1 * s) * i / (i + 20)}
        for s in range(2)
        for i in range(60)
    ]
    p = _jsonl(tmp_path / "runs.jsonl", rows)
    r = cli("fit", p, "--json", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert [run["name"] for run in json.loads(r.stdout)["runs"]] == ["seed0", "seed1"]
    assert "duplicate x" not in r.stderr
