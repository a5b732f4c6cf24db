"""The trainer's side of eval_mode "process": the eval line of step v carries v's clock, whenever the score comes."""

import torch

from scalerl.shared.wire.messages import EvalRequest, EvalResult
from scalerl.shared.wiring import RunWiring
from scalerl.trainer_service.evaluation import ProcessEvaluation


def test_the_eval_line_carries_the_clock_of_its_step_and_errors_write_none(tmp_path):
    sent: list[EvalRequest] = []
    ev = ProcessEvaluation(RunWiring(eval_weights_addr=f"ipc://{tmp_path}/evalw"), lambda msg: sent.append(msg) or True)
    lines: list[tuple] = []

    def record(kind, step, **values):
        lines.append((kind, step, values))

    try:
        weights = {"w": torch.zeros(3)}
        ev.request(weights, 20, record, {"gpu_hours": 1.5, "time_s": 10.0})
        ev.request(weights, 40, record, {"gpu_hours": 3.0, "time_s": 20.0})
        assert [m.version for m in sent] == [20, 40] and sorted(ev.pending) == [20, 40] and lines == []
        # Answers come while the run's clock is far ahead; the lines keep the clock of the step they score.
        ev.on_result(EvalResult(peer_id="eval-0", version=20, pass_rate=0.25, n_samples=8, eval_k=4), record)
        ev.on_result(EvalResult(peer_id="eval-0", version=40, error="replaced before it arrived"), record)
        ev.on_result(EvalResult(peer_id="eval-0", version=60, pass_rate=0.5, n_samples=8), record)  # never asked
    finally:
        ev.close()
    assert len(lines) == 1
    kind, step, values = lines[0]
    assert (kind, step, values["gpu_hours"], values["time_s"]) == ("eval", 20, 1.5, 10.0)
    assert values["pass_rate"] == 0.25 and values["n_samples"] == 8
    assert ev.pending == {} and ev.n_failed == 1
