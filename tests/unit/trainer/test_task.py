"""The default task: worked answers only for the warm-start set, a verifier for everything."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.trainer import task


def test_worked_answers_write_each_running_value() -> None:
    spec = task.TaskSpec(num_terms=3, ops="+-", max_value=20, num_warm_start=50, num_eval=20)
    for problem in task.warm_start_set(spec):
        values = [int(v) for v in problem.worked_answer.split(" ")]
        assert len(values) == 2 and values[-1] == problem.answer
        assert task.verify(problem.prompt, problem.worked_answer + "\n") == 1.0
    assert task.make_problem(spec, "warm", 3) == task.make_problem(spec, "warm", 3)


def test_verifier_needs_no_reference_and_rejects_wrong_or_missing_answers() -> None:
    assert task.verify("Compute 47 + 38 - 12.", "85 73\n") == 1.0
    assert task.verify("Compute 47 + 38 - 12.", "85 74\n") == 0.0
    assert task.verify("Compute 47 + 38.", "no number") == 0.0
    # Only the first line counts: what follows the EOS is not the answer.
    assert task.verify("Compute 47 + 38.", "84\n85") == 0.0
    # A data-plane prompt with a reference is judged against it.
    assert task.verify("Compute 2 * 3.", "6", reference="6") == 1.0
    assert task.verify("Compute 2 * 3.", "6", reference="7") == 0.0
    assert task.evaluate_expression("Compute 5 * 2 - 3.") == 7


def test_held_out_set_is_disjoint_from_warm_start_and_rl_prompts_carry_no_answer() -> None:
    spec = task.TaskSpec(max_value=9, num_warm_start=40, num_eval=30)
    warm = {p.prompt for p in task.warm_start_set(spec)}
    held_out = task.eval_set(spec)
    assert len(held_out) == 30 and not warm & {p.prompt for p in held_out}
    prompt = task.rl_prompt(spec, 0)
    assert prompt.startswith("Compute ") and prompt.endswith(".")


def test_max_terms_gives_a_long_tail_of_answer_lengths() -> None:
    spec = task.TaskSpec(num_terms=2, max_terms=6, max_value=9, num_warm_start=2000, num_eval=20)
    counts = [0] * 7
    longest = 0
    for problem in task.warm_start_set(spec):
        terms = len(problem.prompt.split()) // 2
        counts[terms] += 1
        longest = max(longest, len(problem.worked_answer) + 1)
        assert task.verify(problem.prompt, problem.worked_answer + "\n") == 1.0
    # Each extra operand half as likely as one fewer: about 1032, 516, 258, 129, 65 of 2000.
    assert counts[2] > counts[3] > counts[4] > counts[5] > counts[6] > 0
    assert 0.4 < counts[3] / counts[2] < 0.6
    assert longest <= task.max_answer_tokens(spec) == 5 * 3
    # Without max_terms the problems are what they always were (the same draws).
    plain = task.TaskSpec(num_terms=3, max_value=9)
    assert [task.make_problem(plain, "rl", i) for i in range(20)] == [
        task.make_problem(task.TaskSpec(num_terms=3, max_terms=3, max_value=9), "rl", i) for i in range(20)
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_terms": 1}, "task.num_terms"),
        ({"num_terms": 4, "max_terms": 3}, "task.max_terms"),
        ({"ops": "/"}, "task.ops"),
        ({"num_eval": 0}, "task.num_eval"),
    ],
)
def test_bad_task_specs_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        task.TaskSpec(**kwargs)  # type: ignore[arg-type]
