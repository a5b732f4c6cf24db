"""The [eval] config section: held-out evaluation. Torch-free.

In shared/ because both ends of evaluation read it: the trainer (inline evaluation, trainer_service/evaluation.py;
when to evaluate, where) and the evaluator process (generator_service/evaluator_service.py, `scalerl evaluator`).
Each receives it beside its own section, as it receives [wiring].
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from scalerl.shared.wire.values import sampling_problem
from scalerl.shared.wiring import RunWiring

SECTION = "eval"  # its table in the TOML file
# The keys, here and in [generator], that act only once a sample is interrupted (a thinking budget turns that on).
INTERRUPTION_ONLY_KEYS = ("answer_budget", "interruption_text", "think_end_text")


@dataclass(frozen=True)
class EvalConfig:
    # Held-out evaluation: mean@k pass rate on `prompts` validation prompts every `every` steps.
    every: int = 10
    prompts: int = 100
    k: int = 4
    temperature: float = 1.0
    # Forced interruption at evaluation, with one fixed budget so that every evaluation scores the same way (a budget
    # drawn per request would add noise to the curve). Unset = not interrupted. `scalerl train` sets them from
    # [generator]: the budget to the max of generator.thinking_budget (unless set here), the rest to what the
    # generators use. Unset texts mean the task's (shared/tasks/catalog.py interruption_defaults).
    thinking_budget: int | None = None
    answer_budget: int | None = None
    interruption_text: str | None = None
    think_end_text: str | None = None
    # Where held-out evaluation runs (docs/trainer.md, "Evaluation"). "process": the evaluator process (`scalerl
    # evaluator`, a generator-side engine, torch or vLLM, started by `scalerl train`, where this is the default)
    # scores each version while training goes on. "inline": in the trainer, on a CPU torch engine, blocking training
    # (a bare `scalerl trainer` has nobody to start an evaluator; small tests; the bench's comparison).
    mode: Literal["inline", "process"] = "inline"

    def check(self) -> None:
        for name in ("every", "prompts", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise ValueError(f"thinking_budget must be >= 0, not {self.thinking_budget}")
        if self.answer_budget is not None and self.answer_budget < 1:
            raise ValueError(f"answer_budget must be >= 1, not {self.answer_budget}")
        # The engines' own sampling check (shared/wire/messages.py): a value the evaluator's engine would refuse
        # mid-run is refused with the config, by every command that reads [eval] (a bare evaluator included).
        problem = sampling_problem(temperature=self.temperature)
        if problem is not None:
            raise ValueError(problem)

    def check_wiring(self, wiring: RunWiring) -> None:
        """What evaluation asks of the run's wiring (each is checked on its own first)."""
        if self.mode == "process" and not wiring.eval_weights_addr:
            raise ValueError("eval.mode 'process' needs wiring.eval_weights_addr (scalerl train sets it)")


# The [trainer] keys these were before [eval] existed: a config that still sets one is refused with one line naming
# the new place (shared/config.py from_dict), e.g. "'trainer.eval_every' moved to [eval] every".
MOVED_KEYS = {f"trainer.eval_{f.name}": f"[{SECTION}] {f.name}" for f in fields(EvalConfig)}
