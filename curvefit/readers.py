"""Read curves from run directories and from other frameworks' exports.

Supported sources (detected from the path):
- a scalerl run directory: its metrics.jsonl, eval lines (docs/run-dir.md);
- a sweep directory of `scalerl sweep` (sweep.json): every variant's run, named by the variant (docs/sweeps.md);
- CSV or JSONL with one row per point (optionally several runs, split by --run-col); a JSONL line without the
  metric (a train line of a step log) is skipped, as a CSV's blank cell is;
- verl's file logger (trainer.logger=['file']): one {"step": N, "data": {metric: value}} line per step, the
  validation metrics in the lines of every test_freq-th step only;
- the W&B CSV export, with columns "<run> - <metric>" (its "__MIN"/"__MAX" copies are ignored);
- an HF trainer_state.json, whose log_history is read.
"""

from __future__ import annotations

import csv
import json
import re
from array import array
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import Curve, clean_curve
from .errors import InputError

# Tried in order when --x / --y are not given.
X_CANDIDATES = ("gpu_hours", "compute", "x", "step", "global_step", "Step", "_step", "train/global_step")
Y_CANDIDATES = ("pass_rate", "y", "accuracy", "reward", "eval_accuracy", "eval_pass_rate")
WANDB_SEP = " - "
SWEEP_FILE = "sweep.json"  # marks a sweep directory (cli/sweep_cmd.py)
# Samples behind each evaluation (prompts x k), tried when --samples-col is not given: scalerl's eval lines write
# n_samples; eval_samples is the documented name for external files.
SAMPLES_CANDIDATES = ("eval_samples", "n_samples")
# verl's validation metrics: "val-core/<data source>/<acc|reward>/mean@N" (and "val-aux/..."), "val/test_score/<data
# source>" before verl 0.4; the one core metric of a verl log is its default --y.
VERL_VAL_PREFIXES = ("val-core/", "val/test_score/")
TASK_CURVE_KEY = "\0curve"  # the curve a run-dir eval line belongs to; a key no metrics.jsonl line can have


@dataclass
class ReadOptions:
    x: str | None = None
    y: str | None = None
    run_col: str | None = None
    group_col: str | None = None  # --group-by: each run records its value of this column (first row)
    samples_col: str | None = None  # --samples-col: per-row sample count of each evaluation
    samples: float | None = None  # --samples N: one sample count for every evaluation


def read_sources(paths, opts: ReadOptions) -> list[Curve]:
    curves: list[Curve] = []
    if opts.samples is not None and not (opts.samples >= 1 and np.isfinite(opts.samples)):
        raise InputError(f"--samples must be a count of at least 1, not {opts.samples:g}")
    if opts.samples is not None and opts.samples_col is not None:
        raise InputError("--samples and --samples-col both give the sample counts; use one")
    if opts.x is not None and opts.x == opts.y:
        raise InputError(f"--x and --y both name column {opts.x!r}; compute and performance must be different columns")
    for p in paths:
        curves.extend(read_source(Path(p), opts))
    if opts.samples is not None:
        for c in curves:
            if c.samples is not None or c.counted:
                # --samples is for files without counts; overriding a file's own counts would hide a mistake, and so
                # would filling the rows a blank count left unknown with a count the file contradicts.
                some = "" if c.samples is not None else ", blank on some rows"
                raise InputError(
                    f"{c.name}: its source gives sample counts ({' or '.join(SAMPLES_CANDIDATES)}{some}); "
                    "drop --samples"
                )
            c.samples = np.full(len(c), float(opts.samples))
    names = [c.name for c in curves]
    for i, c in enumerate(curves):
        if names.count(c.name) > 1:  # keep names unique so tables and JSON can key on them
            c.name = f"{c.name}#{i}"
    return curves


def read_source(path: Path, opts: ReadOptions) -> list[Curve]:
    try:
        return _read_source(path, opts)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text file (undecodable byte at offset {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


def _read_source(path: Path, opts: ReadOptions) -> list[Curve]:
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / SWEEP_FILE).is_file():
            return read_sweep(path, opts)
        return read_run_dir(path, opts)
    suffix = path.suffix.lower()
    if path.name.endswith("trainer_state.json"):
        return _read_trainer_state(path, opts)
    if path.name == "metrics.jsonl" and _first_line_has(path, "kind"):
        # A run dir's own file, named instead of its dir: as a plain JSONL its train lines would lack the metric.
        return read_run_dir(path.parent, opts)
    if suffix in (".jsonl", ".ndjson"):
        warnings: list[str] = []
        rows = _Columns(_wanted_keys(opts), prefixes=() if opts.y else VERL_VAL_PREFIXES)
        nested = False
        for line_no, obj in _jsonl_objects(path, warnings):
            if isinstance(obj.get("data"), dict) and "step" in obj:
                obj, nested = _unnest_step_log(obj), True
            rows.append(line_no, obj)
        if opts.run_col is None and opts.y != "run" and "run" in rows.keys:
            # As for a CSV: without it every run's points would be pooled into one curve and averaged.
            opts = replace(opts, run_col="run")
        if nested and opts.y is None and not any(k in rows.keys for k in Y_CANDIDATES):
            opts = replace(opts, y=_verl_metric(path, rows.keys))
        # sparse: a step log writes its eval metric on some lines only (verl: every test_freq-th step); a line
        # without it is skipped as a CSV's blank cell is. A file where no line has it is still refused.
        return _rows_to_curves(
            rows, path, opts, default_name=path.stem, warnings=warnings, columns=sorted(rows.keys), sparse=True
        )
    if suffix == ".json":
        return _read_trainer_state(path, opts)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, opts)
    raise InputError(
        f"{path}: unknown file type {suffix!r} (expected a run directory, .csv, .jsonl or trainer_state.json)"
    )


def read_run_dir(path: Path, opts: ReadOptions, max_step: int | None = None, name: str | None = None) -> list[Curve]:
    """The eval lines of a scalerl run directory; `max_step` keeps those up to that step (the live forecast refits
    the run as it stood after one evaluation, and a test compares it with `scalerl fit` on the same points)."""
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise InputError(f"{path}: not a run directory (no metrics.jsonl)")
    rows, warnings = _read_jsonl(metrics, keep=lambda r: r.get("kind", "eval") == "eval")
    if not rows and not warnings and metrics.stat().st_size:
        # A run that has trained but not yet evaluated: its lines are records, just none to fit.
        raise InputError(f"{metrics}: no evaluations yet (no eval line)")
    if max_step is not None:
        rows = [(i, r) for i, r in rows if isinstance(r.get("step"), int) and r["step"] <= max_step]
    base = name or path.name
    run_col = opts.run_col
    if run_col is None and any("task" in r for _, r in rows):
        # A multi-task run: one curve per task, named "RUN/label" (docs/run-dir.md); lines without a task (a
        # single-task run's) stay the run's own curve.
        rows = [(i, {**r, TASK_CURVE_KEY: f"{base}/{r['task']}" if "task" in r else base}) for i, r in rows]
        run_col = TASK_CURVE_KEY
    opts = replace(opts, x=opts.x or "gpu_hours", y=opts.y or "pass_rate", run_col=run_col)
    curves = _rows_to_curves(rows, metrics, opts, default_name=base, warnings=warnings)
    # The step-0 evaluation is the policy before RL, a second (of gpu_hours) into the run. Per curve: in a
    # multi-task run a task first evaluated later has no step-0 point, and its late R0 must still warn.
    at_step_0 = {str(r.get(run_col, base)) for _, r in rows if r.get("step") == 0 and opts.y in r}
    for c in curves:
        c.starts_before_training = c.name in at_step_0
    return curves


def sweep_variants(path: Path) -> dict:
    """SWEEP_DIR/sweep.json as written by `scalerl sweep` (docs/sweeps.md)."""
    try:
        plan = json.loads((path / SWEEP_FILE).read_text())
        names = [v["name"] for v in plan["variants"]]
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("every variant needs a name")
    except (OSError, ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
        raise InputError(f"{path / SWEEP_FILE}: not a sweep plan ({type(e).__name__}: {e})") from None
    return plan


def read_sweep(path: Path, opts: ReadOptions) -> list[Curve]:
    """Every variant of a sweep that has evaluations, named by its variant; the others are named in a warning."""
    plan = sweep_variants(path)
    curves: list[Curve] = []
    missing = []
    for v in plan["variants"]:
        run = path / v["name"] / "run"
        if not (run / "metrics.jsonl").is_file():
            missing.append(v["name"])
            continue
        try:
            curves.extend(read_run_dir(run, opts, name=v["name"]))
        except InputError:
            missing.append(v["name"])  # started but no evaluation yet
    if not curves:
        raise InputError(f"{path}: no variant of this sweep has evaluations yet ({', '.join(missing)})")
    if missing:
        curves[0].source_warnings.extend(f"sweep variant left out: {v}: no evaluations yet" for v in missing)
    return curves


def _read_jsonl(path: Path, keep=None):
    """(line number, object) of every JSON line, read one line at a time; `keep(obj)` false drops a line as it is
    read: a long run's metrics.jsonl is mostly train lines, and holding them all took 7x the file's size."""
    warnings: list[str] = []
    rows = [(i, obj) for i, obj in _jsonl_objects(path, warnings) if keep is None or keep(obj)]
    return rows, warnings


def _jsonl_objects(path: Path, warnings: list[str]):
    """Yield (line number, object) of every JSON line; a truncated last line is appended to `warnings`."""
    bad = None  # the first line that is not JSON: an error unless it is the last line (a run still writing)
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            if b"\x00" in raw:
                raise InputError(f"{path}: not a text file (contains NUL bytes)")
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            if bad is not None:
                raise InputError(f"{path}:{bad[0]}: invalid JSON ({bad[1]})")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                bad = (i, e.msg)
                continue
            except RecursionError:  # nested past Python's stack: not a metrics line, and never a crash
                raise InputError(f"{path}:{i}: invalid JSON (nested too deeply)") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{i}: expected a JSON object per line")
            yield i, obj
    if bad is not None:
        warnings.append(f"ignored a truncated last line ({path.name}:{bad[0]})")


def _unnest_step_log(obj: dict) -> dict:
    """verl's file logger line {"step": N, "data": {...}} as one flat row: the metrics beside the step."""
    return {**obj["data"], **{k: v for k, v in obj.items() if k != "data"}}


def _verl_metric(path: Path, keys) -> str | None:
    """The validation metric of a verl log when it has exactly one core one; None leaves --y to the usual search,
    which names the columns when none is found."""
    found = sorted(k for k in keys if k.startswith(VERL_VAL_PREFIXES))
    if len(found) > 1:
        raise InputError(
            f"{path}: several validation metrics in this verl log, choose one with --y ({', '.join(found)})"
        )
    return found[0] if found else None


def _wanted_keys(opts: ReadOptions) -> set[str]:
    """The keys a curve can be read from under `opts`: the named columns, or every candidate for those not named."""
    wanted = {opts.x} if opts.x else set(X_CANDIDATES)
    wanted |= {opts.y} if opts.y else set(Y_CANDIDATES)
    wanted |= {opts.samples_col} if opts.samples_col else set(SAMPLES_CANDIDATES)
    wanted.add(opts.run_col or "run")
    if opts.group_col:
        wanted.add(opts.group_col)
    return wanted


_MISSING, _FLOAT, _INT = -1, -2, -3  # column codes; a code k >= 0 is the k-th distinct other value
_EXACT_INT = 2**53  # beyond it a float no longer holds every int


class _Columns:
    """The rows of a generic JSONL file as columns of the keys in `wanted`, for `_rows_to_curves`.

    A million lines held as dicts peaked near 1 GB; here a row costs 12 bytes a wanted key it could hold: a code
    (missing, float, int, or which of the column's other values) and a float. Iterating yields (line number, dict of
    the row's wanted keys) with each value as json.loads gave it, ints as ints (a run named 3 is "3", not "3.0"), so
    the curves, and every error's line number and wording, are those of the dict rows. `keys` holds every key seen,
    wanted or not, for the column listings of errors.
    """

    def __init__(self, wanted, prefixes: tuple[str, ...] = ()):
        self.wanted = frozenset(wanted)
        self.prefixes = prefixes  # keys starting with one of these are kept too (verl's validation metrics)
        self.keys: dict[str, None] = {}  # an ordered set
        self.lines = array("q")
        self.cols: dict[str, tuple[array, array, list, dict]] = {}

    def __len__(self) -> int:
        return len(self.lines)

    def append(self, line_no: int, obj: dict) -> None:
        n = len(self.lines)
        self.lines.append(line_no)
        if not self.keys.keys() >= obj.keys():
            for k in obj:
                if k not in self.keys:
                    self.keys[k] = None
                    if k in self.wanted or k.startswith(self.prefixes):  # earlier rows lack it
                        self.cols[k] = (array("i", [_MISSING]) * n, array("d", [0.0]) * n, [], {})
        for k, (codes, nums, others, index) in self.cols.items():
            if k not in obj:
                codes.append(_MISSING)
                nums.append(0.0)
                continue
            v = obj[k]
            t = type(v)
            if t is float:
                codes.append(_FLOAT)
                nums.append(v)
            elif t is int and -_EXACT_INT <= v <= _EXACT_INT:
                codes.append(_INT)
                nums.append(v)
            else:  # strings, null, booleans, lists, huge ints: few distinct ones in a column, kept once each
                try:
                    code = index.setdefault((t, v), len(others))
                    if code == len(others):
                        others.append(v)
                except TypeError:  # a list or an object: not hashable, kept as it is
                    code = len(others)
                    others.append(v)
                codes.append(code)
                nums.append(0.0)

    def __iter__(self):
        cols = list(self.cols.items())
        for i, line_no in enumerate(self.lines):
            row = {}
            for k, (codes, nums, others, _) in cols:
                code = codes[i]
                if code == _FLOAT:
                    row[k] = nums[i]
                elif code == _INT:
                    row[k] = int(nums[i])
                elif code != _MISSING:
                    row[k] = others[code]
            yield line_no, row


def _first_line_has(path: Path, key: str) -> bool:
    with path.open("rb") as f:
        try:
            first = json.loads(f.readline())
        except (ValueError, RecursionError):  # not JSON, not text, or nested too deeply: the JSONL reader names it
            return False
    return isinstance(first, dict) and key in first


def _read_csv(path: Path, opts: ReadOptions) -> list[Curve]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.reader(f, delimiter=delim)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: empty file") from None
        header = [h.strip() for h in header]
        semicolon = delim == "," and len(header) == 1 and ";" in header[0]
        if semicolon:
            # A European Excel export: ';' between fields because ',' is its decimal mark. A one-field header with
            # ';' in it is such a file, not one column named "step;pass_rate", which was refused as "no column".
            f.seek(0)
            reader = csv.reader(f, delimiter=";")
            header = [h.strip() for h in next(reader)]
        elif delim == "," and any(";" in h for h in header) and not _has_xy(header, opts):
            # Both separators in the header and no x/y column under ',': either reading is a guess.
            raise InputError(
                f"{path}: the header has both ',' and ';' between its names and its columns are not found with ',' "
                "(a ';'-separated export?); re-export it with one separator, or name the columns with --x / --y"
            )
        if opts.run_col is None and any(WANDB_SEP in h for h in header):
            return _read_wandb(path, header, reader, opts)
        if opts.run_col is None and "run" in header and opts.y != "run":
            opts = replace(opts, run_col="run")
        point, mark = str, None
        if semicolon:
            # The decimal mark is the file's, not each cell's: '1.000' beside '0,45' is a thousand, beside '0.45'
            # it is one. A first pass reads only the numeric columns' separators; the second streams the values.
            mark = _decimal_mark(path, reader, _numeric_columns(header, opts, path))
            f.seek(0)
            reader = csv.reader(f, delimiter=";")
            next(reader)
            point = _to_point(mark or ",")
        curves = _stream_csv(path, reader, header, opts, point)
        if semicolon:
            said = f", with {mark!r} as the decimal mark" if mark else ""
            for c in curves:
                c.warnings.append(f"{path.name}: read as ';'-separated{said}")
        return curves


def _has_xy(header, opts: ReadOptions) -> bool:
    def found(wanted, candidates):
        return wanted in header if wanted is not None else any(c in header for c in candidates)

    return found(opts.x, X_CANDIDATES) and found(opts.y, Y_CANDIDATES)


# A number whose one separator is followed by exactly three digits (1.000, 1,000) reads as a decimal or as a
# thousands mark alike; a leading 0 (0.500) cannot be a thousands group.
_EITHER_MARK = re.compile(r"[+-]?[1-9]\d{0,2}[.,]\d{3}")
# A number grouped in thousands by the key, with the other mark as its decimal: 1.234.567,5 / 1,234,567.5.
_GROUPED = {
    ".": re.compile(r"[+-]?[1-9]\d{0,2}(?:\.\d{3})+(?:,\d*)?"),
    ",": re.compile(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d*)?"),
}
_ONE_MARK = re.compile(r"[+-]?\d*[.,]\d*(?:[eE][+-]?\d+)?")
_OTHER = {".": ",", ",": "."}


def _numeric_columns(header, opts: ReadOptions, path: Path) -> list[tuple[int, str]]:
    cols = [_pick(opts.x, X_CANDIDATES, header, path, "--x"), _pick(opts.y, Y_CANDIDATES, header, path, "--y")]
    n_col = _samples_column(opts.samples_col, header)
    if n_col in header:
        cols.append(n_col)
    return [(header.index(c), c) for c in cols]


def _mark_of(value: str) -> str | None:
    """The decimal mark a number shows: '.', ',', '?' when either reading holds (1.000), None when it shows none."""
    s = value.strip()
    dot, comma = "." in s, "," in s
    if dot and comma:
        last = "," if s.rfind(",") > s.rfind(".") else "."
        return last if _GROUPED[_OTHER[last]].fullmatch(s) else None
    if not (dot or comma):
        return None
    sep = "." if dot else ","
    if s.count(sep) > 1:
        return _OTHER[sep] if _GROUPED[sep].fullmatch(s) else None
    if _EITHER_MARK.fullmatch(s):
        return "?"
    return sep if _ONE_MARK.fullmatch(s) and any(ch.isdigit() for ch in s) else None


def _decimal_mark(path: Path, rows, cols: list[tuple[int, str]]) -> str | None:
    """The decimal mark of a ';'-separated file, from every number in its numeric columns; None when none shows one.

    Guessing per cell read a European export's 1.000 steps as 1.0, and a '.'-decimal file's 1,000 as 1.0: a file
    whose numbers disagree, or whose only evidence is such a value, is refused naming the values."""
    seen: dict[str, tuple[int, str, str]] = {}
    either = None
    for line_no, r in enumerate(rows, 2):
        for i, col in cols:
            if i >= len(r) or ("." not in r[i] and "," not in r[i]):
                continue
            mark = _mark_of(r[i])
            if mark == "?":
                either = either or (line_no, col, r[i].strip())
            elif mark is not None and mark not in seen:
                seen[mark] = (line_no, col, r[i].strip())
                if len(seen) == 2:
                    (pl, pc, pv), (cl, cc, cv) = seen["."], seen[","]
                    raise InputError(
                        f"{path}: numbers with a decimal point ({pv!r} in {pc!r}, line {pl}) and with a decimal "
                        f"comma ({cv!r} in {cc!r}, line {cl}); re-export it with one decimal mark"
                    )
    if seen:
        return next(iter(seen))
    if either is not None:
        line_no, col, v = either
        sep = "." if "." in v else ","
        one, thousand = float(v.replace(sep, ".")), float(v.replace(sep, ""))
        raise InputError(
            f"{path}:{line_no}: {col!r} is {v!r}, {one:g} with {sep!r} as the decimal mark or {thousand:g} with "
            f"{sep!r} as a thousands mark, and no other number in the file shows which; re-export it without "
            "thousands marks"
        )
    return None


def _to_point(mark: str):
    """A ';'-separated file's numbers as float() reads them: thousands marks dropped, the decimal mark a point."""
    other = _OTHER[mark]
    grouped = _GROUPED[other]

    def point(value: str) -> str:
        s = value.strip()
        if other in s and grouped.fullmatch(s):
            s = s.replace(other, "")
        return s.replace(",", ".") if mark == "," and s.count(",") == 1 and "." not in s else s

    return point


def _stream_csv(path: Path, reader, header, opts: ReadOptions, point=str) -> list[Curve]:
    """One pass over the rows keeping only the needed columns as float arrays: a million-row export stays small."""
    x_col = _pick(opts.x, X_CANDIDATES, header, path, "--x")
    y_col = _pick(opts.y, Y_CANDIDATES, header, path, "--y")
    _distinct(x_col, y_col, path, opts)
    for col, flag in ((opts.run_col, "--run-col"), (opts.group_col, "--group-by"), (opts.samples_col, "--samples-col")):
        if col is not None and col not in header:
            raise InputError(f"{path}: unknown column {col!r} for {flag} (columns: {', '.join(header[:12])})")
    n_col = _samples_column(opts.samples_col, header)
    for col in (x_col, y_col, opts.run_col, opts.group_col, n_col):
        if col is not None and header.count(col) > 1:
            # Reading the first copy would fit one of two columns without saying which.
            raise InputError(
                f"{path}: column {col!r} appears {header.count(col)} times in the header; rename the copies"
            )
    xi, yi = header.index(x_col), header.index(y_col)
    ni = header.index(n_col) if n_col else None
    ri = header.index(opts.run_col) if opts.run_col else None
    gi = header.index(opts.group_col) if opts.group_col else None
    runs: dict[str, tuple[array, array]] = {}
    samples: dict[str, array] = defaultdict(lambda: array("d"))
    group_of: dict[str, str] = {}
    for line_no, r in enumerate(reader, 2):
        if not any(c.strip() for c in r):
            continue
        if yi >= len(r) or xi >= len(r):
            raise InputError(f"{path}:{line_no}: {len(r)} fields, expected {len(header)} (truncated row?)")
        if r[yi] == "":
            continue
        name = r[ri] if ri is not None and ri < len(r) else path.stem
        if not name.strip():  # not a run named "": a hole in the file, and no --group-glob can name it
            raise InputError(f"{path}:{line_no}: blank run name in {opts.run_col!r}")
        if name not in runs:
            runs[name] = (array("d"), array("d"))
            if gi is not None:
                group_of[name] = r[gi] if gi < len(r) else ""
        xs, ys = runs[name]
        xs.append(_number(point(r[xi]), path, line_no, x_col))
        ys.append(_number(point(r[yi]), path, line_no, y_col))
        if ni is not None:
            samples[name].append(_count(point(r[ni]) if ni < len(r) else "", path, line_no, n_col))
    if not runs:
        raise InputError(f"{path}: no rows with {y_col!r}")
    curves = [
        clean_curve(n, xs, ys, x_col, y_col, [], samples=samples[n] if ni is not None else None)
        for n, (xs, ys) in runs.items()
    ]
    for c in curves:
        c.group = group_of.get(c.name)
    return curves


def _read_wandb(path: Path, header, reader, opts: ReadOptions) -> list[Curve]:
    """W&B's "Export CSV": a step column plus one column per run and metric, with blanks where a run logged nothing.

    One pass over the rows keeping only the chosen metric's columns as float arrays: an export of every metric of
    a long run holds tens of millions of cells, too many to keep as strings."""
    for col, flag, instead in (
        (opts.group_col, "--group-by", "--group-glob NAME=GLOB"),
        (opts.samples_col, "--samples-col", "--samples N"),
    ):
        if col is not None:
            raise InputError(f"{path}: a W&B export has a column per run and metric, none for {flag}; use {instead}")
    series = [h for h in header if WANDB_SEP in h and not h.endswith(("__MIN", "__MAX"))]
    # A run's display name may hold " - " itself ("GRPO - lr 1e-6 - val/acc"); a metric key rarely does: the metric is
    # what follows the last separator, or --y when a column ends with it.
    metrics = sorted({h.rsplit(WANDB_SEP, 1)[1] for h in series})
    if opts.y is not None:
        if not any(h.endswith(WANDB_SEP + opts.y) for h in series):
            raise InputError(f"{path}: unknown metric {opts.y!r} (W&B export has: {', '.join(metrics)})")
        metric = opts.y
    elif len(metrics) == 1:
        metric = metrics[0]
    else:
        raise InputError(f"{path}: several metrics in this W&B export, choose one with --y ({', '.join(metrics)})")
    x_col = _pick(opts.x, X_CANDIDATES, header, path, "--x")
    xi = header.index(x_col)
    suffix = WANDB_SEP + metric
    cols = [(header.index(h), h) for h in series if h.endswith(suffix) and len(h) > len(suffix)]
    points = {ci: (array("d"), array("d")) for ci, _ in cols}
    for line_no, r in enumerate(reader, 2):
        for ci, col in cols:
            if ci >= len(r) or not r[ci].strip():
                continue
            xs, ys = points[ci]
            xs.append(_number(r[xi] if xi < len(r) else "", path, line_no, x_col))
            ys.append(_number(r[ci], path, line_no, col))
    return [clean_curve(col[: -len(suffix)], *points[ci], x_col, metric) for ci, col in cols]


def _read_trainer_state(path: Path, opts: ReadOptions) -> list[Curve]:
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise InputError(f"{path}: invalid JSON (nested too deeply)") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise InputError(f"{path}: no log_history list (is this an HF trainer_state.json?)")
    rows = [(i, r) for i, r in enumerate(history) if isinstance(r, dict)]
    if opts.y is None:
        evals = sorted(
            {
                k
                for _, r in rows
                for k in r
                if k.startswith("eval_") and not k.endswith(("_loss", "_runtime", "_per_second"))
            }
        )
        if len(evals) != 1:
            raise InputError(f"{path}: choose the metric with --y (eval keys: {', '.join(evals) or 'none'})")
        opts = replace(opts, x=opts.x or "step", y=evals[0])
    return _rows_to_curves(rows, path, opts, default_name=path.parent.name or path.stem, warnings=[], sparse=True)


def _rows_to_curves(rows, path: Path, opts: ReadOptions, default_name, warnings, columns=None, sparse=False):
    """Turn (line number, dict) rows into curves, one per value of the run column.

    sparse: rows lacking the y key are skipped (logs mix train and eval lines); otherwise a
    missing key on a row is an error naming the line.
    """
    if not rows:
        raise InputError(f"{path}: no records" + (f" ({'; '.join(warnings)})" if warnings else ""))
    keys = columns or sorted({k for _, r in rows for k in r})
    x_col = _pick(opts.x, X_CANDIDATES, keys, path, "--x")
    y_col = _pick(opts.y, Y_CANDIDATES, keys, path, "--y")
    _distinct(x_col, y_col, path, opts)
    if opts.run_col is not None and opts.run_col not in keys:
        raise InputError(f"{path}: unknown column {opts.run_col!r} for --run-col (columns: {', '.join(keys[:12])})")
    if opts.samples_col is not None and opts.samples_col not in keys:
        raise InputError(
            f"{path}: unknown column {opts.samples_col!r} for --samples-col (columns: {', '.join(keys[:12])})"
        )
    n_col = _samples_column(opts.samples_col, keys)
    # Float arrays, not lists: a list holds a 24-byte float object per point besides its 8-byte pointer.
    groups: dict[str, tuple[array, array]] = defaultdict(lambda: (array("d"), array("d")))
    counts: dict[str, array] = defaultdict(lambda: array("d"))
    for line_no, r in rows:
        if y_col not in r or r[y_col] in ("", None):
            if sparse or r.get(y_col) == "":
                continue
            raise InputError(f"{path}:{line_no}: missing {y_col!r}")
        value = r.get(opts.run_col, default_name) if opts.run_col else default_name
        name = str(value)
        if value is None or not name.strip():  # not a run named "None" or "": a hole no --group-glob can name
            raise InputError(f"{path}:{line_no}: blank run name in {opts.run_col!r}")
        xs, ys = groups[name]
        xs.append(_number(r.get(x_col), path, line_no, x_col))
        ys.append(_number(r[y_col], path, line_no, y_col))
        if n_col is not None:
            counts[name].append(_count(r.get(n_col), path, line_no, n_col))
    if not groups:
        raise InputError(f"{path}: no rows with {y_col!r}")
    curves = [
        clean_curve(n, xs, ys, x_col, y_col, warnings, samples=counts[n] if n_col is not None else None)
        for n, (xs, ys) in groups.items()
    ]
    if opts.group_col is not None:
        if opts.group_col not in keys:
            raise InputError(f"{path}: unknown column {opts.group_col!r} for --group-by")
        first: dict[str, str] = {}
        for _, r in rows:
            name = str(r.get(opts.run_col, default_name)) if opts.run_col else default_name
            first.setdefault(name, str(r.get(opts.group_col, "")))
        for c in curves:
            c.group = first.get(c.name)
    return curves


def _pick(wanted, candidates, keys, path, flag):
    if wanted is not None:
        if wanted not in keys:
            raise InputError(f"{path}: unknown column {wanted!r} for {flag} (columns: {', '.join(keys[:12])})")
        return wanted
    for c in candidates:
        if c in keys:
            return c
    raise InputError(f"{path}: no column for {flag}; name one with {flag} (columns: {', '.join(keys[:12])})")


def _distinct(x_col: str, y_col: str, path: Path, opts: ReadOptions) -> None:
    """A default picked for one axis can be the column the other names (--x y picks y for --y too): a curve of a
    column against itself is a straight line, not a run."""
    if x_col == y_col:
        other = "--y" if opts.y is None else "--x"
        raise InputError(f"{path}: --x and --y both read column {x_col!r}; name the other with {other} COL")


def _samples_column(wanted, keys) -> str | None:
    if wanted is not None:
        return wanted
    return next((c for c in SAMPLES_CANDIDATES if c in keys), None)


def _count(value, path, line_no, col) -> float:
    """A sample count; blank or missing reads as unknown (NaN: the curve's noise is then estimated instead)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return float("nan")
    n = _number(value, path, line_no, col)
    if np.isfinite(n) and n < 0:
        raise InputError(f"{path}:{line_no}: {col!r} is a negative sample count ({value!r})")
    return n


def _number(value, path, line_no, col) -> float:
    """Parse a number; NaN/inf pass through (clean_curve skips them with a warning), anything else is an error."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"{path}:{line_no}: {col!r} is not a number ({value!r})")
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # a JSON integer past float's range (1e308)
            raise InputError(f"{path}:{line_no}: {col!r} is too large for a float ({str(value)[:20]}...)") from None
    try:
        return float(str(value).strip())
    except ValueError:
        raise InputError(f"{path}:{line_no}: {col!r} is not a number ({value!r})") from None


__all__ = ["ReadOptions", "read_sources", "read_source", "read_run_dir", "read_sweep", "sweep_variants"]
