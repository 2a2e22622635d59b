"""The default task: generated multi-step arithmetic, set up as reasoning RL really is.

- a small **warm-start set** of problems with worked answers (the only labels there are);
- an endless stream of **RL prompts** that come with a rule-based verifier and no reference answer;
- a **held-out evaluation set**, disjoint from the warm-start set, judged by the same verifier.

A problem reads like the data plane's ``arithmetic`` generator (``Compute 47 + 38.``). A worked
answer writes the running value after each operation, left to right, then a newline:
``Compute 47 + 38 - 12.`` -> ``85 73\n``; with two terms it is the result alone. The verifier takes
the last integer of the answer and compares it with the value of the expression (evaluated left to
right, as the worked answer does).

With ``max_terms`` above ``num_terms`` the number of operands varies from problem to problem, each
extra operand half as likely as the one before: most answers are short and a few are several times
longer, the long tail of answer lengths that reasoning RL has (and that makes a synchronous batch wait
for its slowest answer).
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

from services.common.errors import InvalidArgument

_NUMBER = re.compile(r"-?\d+")
_EXPRESSION = re.compile(r"Compute ((?:-?\d+)(?: [-+*] -?\d+)*)\.")


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem."""

    prompt: str
    """What the model sees, e.g. ``Compute 47 + 38.``."""
    worked_answer: str
    """Running values and the result, without the trailing newline."""
    answer: int
    """Value of the expression."""


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """Shape of the generated problems and the sizes of the three sets."""

    num_terms: int = 2
    """Operands per problem (num_terms - 1 operations: the steps of a worked answer); the fewest with
    ``max_terms``."""
    max_terms: int = 0
    """Most operands per problem; 0 for ``num_terms``. Above it, problem sizes follow ``TAIL``."""
    max_value: int = 99
    """Operands are drawn from 0 .. max_value."""
    ops: str = "+"
    """Operations drawn from, a subset of ``+-*``."""
    num_warm_start: int = 400
    """Problems with worked answers (the supervised warm-start set)."""
    num_eval: int = 200
    """Held-out problems, disjoint from the warm-start set."""
    seed: int = 0
    """Seed of all three sets."""

    def __post_init__(self) -> None:
        if not 2 <= self.num_terms <= 8:
            raise InvalidArgument(f"task.num_terms={self.num_terms}: must be in 2..8")
        if self.max_terms and not self.num_terms <= self.max_terms <= 8:
            raise InvalidArgument(
                f"task.max_terms={self.max_terms}: must be 0 (= num_terms) or in num_terms ({self.num_terms})..8"
            )
        if not 1 <= self.max_value <= 10**6:
            raise InvalidArgument(f"task.max_value={self.max_value}: must be in 1..1000000")
        if not self.ops or set(self.ops) - set("+-*"):
            raise InvalidArgument(f"task.ops={self.ops!r}: must be a non-empty subset of '+-*'")
        if self.num_warm_start < 1 or self.num_eval < 1:
            raise InvalidArgument(
                f"task.num_warm_start={self.num_warm_start}, task.num_eval={self.num_eval}: must be >= 1"
            )


TAIL = 0.5
"""With ``max_terms``: each operand beyond ``num_terms`` is this much less likely than one fewer."""


def num_terms_of(spec: TaskSpec, rng: random.Random) -> int:
    """Operands of one problem: ``num_terms``, or with ``max_terms`` a draw from the long tail."""
    top = max(spec.max_terms, spec.num_terms)
    weights = [TAIL**k for k in range(top - spec.num_terms + 1)]
    return spec.num_terms + rng.choices(range(len(weights)), weights)[0] if top > spec.num_terms else top


def max_answer_tokens(spec: TaskSpec) -> int:
    """Characters of the longest worked answer plus its newline: what ``max_new_tokens`` must allow."""
    top = max(spec.max_terms, spec.num_terms)
    largest = spec.max_value**top if "*" in spec.ops else spec.max_value * top
    width = len(str(largest)) + ("-" in spec.ops)
    return (top - 1) * (width + 1)


def _rng(seed: int, stream: str, index: int) -> random.Random:
    return random.Random(zlib.crc32(f"{seed}:{stream}:{index}".encode()))


def make_problem(spec: TaskSpec, stream: str, index: int) -> Problem:
    """Problem ``index`` of ``stream`` ("warm", "rl" or "eval"): the same for the same arguments."""
    rng = _rng(spec.seed, stream, index)
    value = rng.randint(0, spec.max_value)
    text = [str(value)]
    steps = []
    for _ in range(num_terms_of(spec, rng) - 1):
        op = rng.choice(spec.ops)
        operand = rng.randint(0, spec.max_value)
        value = value + operand if op == "+" else value - operand if op == "-" else value * operand
        text += [op, str(operand)]
        steps.append(str(value))
    return Problem(prompt=f"Compute {' '.join(text)}.", worked_answer=" ".join(steps), answer=value)


def warm_start_set(spec: TaskSpec) -> list[Problem]:
    """The labelled warm-start problems."""
    return [make_problem(spec, "warm", i) for i in range(spec.num_warm_start)]


def eval_set(spec: TaskSpec) -> list[Problem]:
    """Held-out problems: none has a prompt of the warm-start set."""
    seen = {p.prompt for p in warm_start_set(spec)}
    out: list[Problem] = []
    index = 0
    while len(out) < spec.num_eval:
        problem = make_problem(spec, "eval", index)
        index += 1
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            out.append(problem)
        if index > 50 * spec.num_eval + 1000:
            raise InvalidArgument(f"task: cannot draw {spec.num_eval} held-out problems disjoint from warm start")
    return out


def rl_prompt(spec: TaskSpec, index: int) -> str:
    """RL prompt ``index``: text only, no reference answer (the verifier judges it)."""
    return make_problem(spec, "rl", index).prompt


def evaluate_expression(prompt: str) -> int | None:
    """Value of the ``Compute ...`` expression of a prompt, left to right; None when it does not parse."""
    match = _EXPRESSION.search(prompt)
    if match is None:
        return None
    parts = match.group(1).split(" ")
    value = int(parts[0])
    for op, operand in zip(parts[1::2], parts[2::2], strict=True):
        value = value + int(operand) if op == "+" else value - int(operand) if op == "-" else value * int(operand)
    return value


def final_integer(answer: str) -> int | None:
    """The last integer of an answer's first line; None when there is none."""
    numbers = _NUMBER.findall(answer.split("\n", 1)[0])
    return int(numbers[-1]) if numbers else None


def verify(prompt: str, answer: str, reference: str = "") -> float:
    """1.0 when the answer's last integer is right, else 0.0.

    With a ``reference`` (a data-plane prompt) that is the expected value; without one the verifier
    evaluates the prompt's expression itself, which is what lets RL prompts go without labels.
    """
    got = final_integer(answer)
    if got is None:
        return 0.0
    if reference:
        try:
            return float(got == int(reference.strip()))
        except ValueError:
            return 0.0
    expected = evaluate_expression(prompt)
    return float(expected is not None and got == expected)
