"""Verifiers: exact arithmetic, math equivalence, and code in a sandbox with defined failure verdicts."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.rollout.verifiers import Outcome, Verifiers, verify_arithmetic, verify_math

LABELLED = Path(__file__).parents[3] / "benchmarks" / "data" / "math_answers_labelled.jsonl"
TESTS = "assert f(1) == 2\nassert f(2) == 3\nassert f(10) == 11\n"


def test_arithmetic_takes_the_final_number_exactly() -> None:
    assert verify_arithmetic("85 73", "73").outcome is Outcome.CORRECT
    assert verify_arithmetic("it is 1,234", "1234").score == 1.0
    assert verify_arithmetic("73 85", "73").outcome is Outcome.INCORRECT
    assert verify_arithmetic("-5", "5").score == 0.0
    assert verify_arithmetic("no digits", "3").outcome is Outcome.NO_ANSWER
    with pytest.raises(InvalidArgument, match="expects a number"):
        verify_arithmetic("3", "three")


@pytest.mark.parametrize(
    ("answer", "reference", "correct"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("The answer is 2/4.", "1/2", True),
        ("\\boxed{\\dfrac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
        ("\\boxed{0.333}", "1/3", False),
        ("\\boxed{x = 3}", "3", True),
        ("\\boxed{1,000}", "1000", True),
        ("\\boxed{(1, 2)}", "(2,1)", False),
        ("\\boxed{10^{3}}", "1000", True),
        ("\\boxed{-3}", "3", False),
    ],
)
def test_math_equivalent_forms_and_near_misses(answer: str, reference: str, correct: bool) -> None:
    assert (verify_math(answer, reference).outcome is Outcome.CORRECT) is correct


def test_math_agrees_with_the_hand_labelled_set() -> None:
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines()]
    assert len(rows) == 200
    agree = sum((verify_math(r["answer"], r["reference"]).score == 1.0) == bool(r["label"]) for r in rows)
    assert agree >= 196, f"agreement {agree}/200"


def test_math_refuses_to_evaluate_unbounded_expressions() -> None:
    verdict = verify_math("\\boxed{9^{9^{9^{9}}}}", "1")
    assert verdict.outcome is Outcome.INCORRECT
    assert verify_math("\\boxed{__import__('os')}", "1").outcome is Outcome.INCORRECT


@pytest.fixture
def verifiers() -> Verifiers:
    return Verifiers(code_timeout_s=3.0, code_memory_bytes=256 << 20, max_concurrent_code=2)


async def test_code_scores_the_fraction_of_tests_passed(verifiers: Verifiers) -> None:
    right = await verifiers.verify("code", "```python\ndef f(x):\n    return x + 1\n```", TESTS)
    assert (right.score, right.outcome) == (1.0, Outcome.CORRECT)
    partly = await verifiers.verify("code", "def f(x):\n    return x + 1 if x < 5 else 0", TESTS)
    assert partly.outcome is Outcome.INCORRECT and partly.score == pytest.approx(2 / 3)
    assert "assert f(10) == 11" in partly.detail
    assert (await verifiers.verify("code", "   ", TESTS)).outcome is Outcome.NO_ANSWER


@pytest.mark.parametrize(
    ("answer", "outcome", "needle"),
    [
        ("while True:\n    pass", Outcome.TIMEOUT, "time limit"),
        ("blob = bytearray(10**10)", Outcome.CRASHED, "MemoryError"),
        (
            "def f(x):\n    grow = []\n    while True:\n        grow.append(' ' * 10**7)\nf(1)",
            Outcome.CRASHED,
            "MemoryError",
        ),
        ("raise SystemExit(3)", Outcome.CRASHED, "SystemExit"),
        ("import os\nos.kill(os.getpid(), 9)", Outcome.CRASHED, "SIGKILL"),
        ("def f(x) return x", Outcome.CRASHED, "SyntaxError"),
    ],
)
async def test_code_that_hangs_or_crashes_gets_a_defined_verdict(
    verifiers: Verifiers, answer: str, outcome: Outcome, needle: str
) -> None:
    limit_s = 1.0 if outcome is Outcome.TIMEOUT else 0.0  # the server's default (3 s) for the others
    verdict = await verifiers.verify("code", answer, TESTS, timeout_s=limit_s)
    assert verdict.outcome is outcome and verdict.score == 0.0
    assert needle in verdict.detail


async def test_code_cannot_reach_the_network(verifiers: Verifiers) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        accepted: list[object] = []
        server.settimeout(3.0)
        waiter = threading.Thread(target=lambda: _accept(server, accepted), daemon=True)
        waiter.start()
        # Through the socket module and around it, through the C module beneath.
        for how in (
            "import socket\nsocket.create_connection(('127.0.0.1', %d))",
            "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', %d))",
        ):
            code = (how % port) + "\ndef f(x):\n    return x + 1\n"
            verdict = await verifiers.verify("code", code, TESTS)
            assert verdict.outcome is Outcome.CRASHED and verdict.score == 0.0, verdict
        waiter.join()
        assert not accepted


def _accept(server: socket.socket, accepted: list[object]) -> None:
    try:
        accepted.append(server.accept())
    except OSError:
        pass


async def test_unknown_verifier_and_bad_references_are_invalid(verifiers: Verifiers) -> None:
    with pytest.raises(InvalidArgument, match="verifier"):
        await verifiers.verify("poetry", "x", "y")
    with pytest.raises(InvalidArgument, match="reference is empty"):
        await verifiers.verify("math", "\\boxed{1}", " ")
    with pytest.raises(InvalidArgument, match="assert"):
        await verifiers.verify("code", "def f(x): return x", "f(1)")
