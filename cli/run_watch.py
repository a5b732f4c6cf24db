"""What `scalerl train`'s poll loop does besides supervising: live forecasts, stop rules, trackers."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click

from .live_forecast import EXIT_STOP_RULE, LiveForecast, stop_reason

__all__ = ["RunWatch", "EXIT_STOP_RULE"]


class RunWatch:
    def __init__(self, run_dir: Path, run_section, resume: bool, n_records: int = 0):
        self.run = run_section
        self.forecast = LiveForecast(run_dir, run_section.live_forecast)
        self.trackers = None
        if run_section.trackers:
            from .trackers import Trackers

            with open(run_dir / "config.toml", "rb") as f:
                config = tomllib.load(f)
            self.trackers = Trackers(run_dir, run_section.trackers, config)
        # A resumed run's earlier lines went to the trackers in the session that wrote them.
        self.forwarded = n_records if resume else 0

    @property
    def latest(self) -> dict | None:
        return self.forecast.latest

    def tick(self, records: list[dict]) -> str | None:
        """Refit if a new evaluation arrived, forward new lines; returns why a stop rule ends the run, or None."""
        try:
            lines = self.forecast.tick(records)
        except OSError as e:  # no process or file to spare: the forecast is a nicety, the run goes on without it
            click.echo(f"scalerl train: warning: live forecast off for this run: {e}", err=True)
            self.forecast.enabled, lines = False, []
        self._forward(records, lines)
        for line in lines:
            reason = stop_reason(line, self.run)
            if reason:
                return reason
        return None

    def _forward(self, records: list[dict], forecast_lines: list[dict]) -> None:
        if self.trackers is None:
            return
        if len(records) < self.forwarded:  # a resume cut metrics.jsonl back to its checkpoint
            self.forwarded = len(records)
        self.trackers.log_metrics(records[self.forwarded :])
        self.forwarded = len(records)
        self.trackers.log_forecast(forecast_lines)

    def close(self, records: list[dict], final_refit: bool) -> None:
        """After the children stopped: fit the last evaluation (when the run ended normally), flush trackers."""
        if final_refit:
            lines = self.forecast.finish(records)
        else:
            lines = self.forecast.finish(records, timeout_s=0.0)
        self._forward(records, lines)
        if self.trackers is not None:
            self.trackers.close()
