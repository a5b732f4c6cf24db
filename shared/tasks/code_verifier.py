"""The `code` verifier: run the completion's code and the item's tests in the sandbox (shared/tasks/sandbox.py).

The item's answer is test code (`assert f(2) == 4` lines, or anything that exits non-zero on failure). The program
is the completion's last fenced code block (```python ... ```), or the whole completion when it has none, followed
by the tests. Reward 1 when that program exits 0 within the limits; a timeout, a crash, a failed assert, or
anything the sandbox refuses (writes outside its directory, sockets, other programs) is reward 0.
"""

from __future__ import annotations

import re

from scalerl.shared.tasks.sandbox import SandboxLimits, run_python
from scalerl.shared.tasks.types import VerifyResult

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
LIMITS = SandboxLimits()


def extract_code(completion: str) -> str:
    """The last fenced code block of `completion`, else all of it."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def code_match(completion: str, answer: str, limits: SandboxLimits = LIMITS) -> VerifyResult:
    code = extract_code(completion)
    if not code.strip():
        return 0.0, {"correct": False, "has_answer": False, "parsed": ""}
    result = run_python(f"{code}\n\n{answer}\n", limits)
    errors = result.stderr.strip().splitlines()
    return float(result.ok), {
        "correct": result.ok,
        "has_answer": True,
        "parsed": code.strip()[:64],
        "exit_code": -1 if result.returncode is None else result.returncode,
        "timed_out": result.timed_out,
        "error": errors[-1][:160] if errors and not result.ok else "",
        "sandbox_s": round(result.seconds, 4),
    }
