"""Seed groups: which runs are repeats of one recipe (`--group-glob NAME=GLOB`, `--group-by COL`).

Without either, every run is its own group. Runs that no glob matches stay on their own, so a comparison of
two recipes can still include a single extra run.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from .data import Curve
from .errors import InputError


def parse_glob(spec: str) -> tuple[str, str]:
    name, sep, pattern = spec.partition("=")
    if not sep or not name.strip() or not pattern.strip():
        raise InputError(f"--group-glob takes NAME=GLOB, not {spec!r}")
    return name.strip(), pattern.strip()


def group_curves(curves: list[Curve], globs=(), by: str | None = None) -> list[tuple[str, list[Curve]]]:
    if globs and by:
        raise InputError("use --group-glob or --group-by, not both")
    groups: dict[str, list[Curve]] = {}
    if by:
        for c in curves:
            groups.setdefault(f"{by}={c.group}", []).append(c)
        return list(groups.items())
    specs = [parse_glob(g) for g in globs]
    for c in curves:
        hits = [(n, pat) for n, pat in specs if fnmatchcase(c.name, pat)]
        if len(hits) > 1:
            # Taking the first glob silently moved the run out of the second's group, which then matched nothing
            # and was blamed alone: the conflict is between the two, on this run.
            (n1, p1), (n2, p2) = hits[:2]
            raise InputError(f"--group-glob {n1}={p1} and --group-glob {n2}={p2} both match run {c.name!r}")
        groups.setdefault(hits[0][0] if hits else c.name, []).append(c)
    for n, pat in specs:
        if n not in groups:
            raise InputError(f"--group-glob {n}={pat}: no run matches (runs: {', '.join(c.name for c in curves[:8])})")
    return list(groups.items())
