"""Verifiers behind one interface: exact arithmetic, math answers, and code run in a sandbox.

Every verifier returns a ``Verdict`` (score in [0, 1], outcome, detail) and never raises on a bad
answer: an answer with nothing to extract is NO_ANSWER, code that runs past its time limit is
TIMEOUT, code that crashes or exceeds its memory limit is CRASHED, each with score 0.

Code runs in a fresh ``python -I -S`` subprocess in its own session, with address-space, CPU-time,
file-size and open-file limits, stdout/stderr to size-capped files, in a new network namespace
where the kernel allows one (root, or unprivileged user namespaces), and always with Python's socket
constructors replaced by ones that refuse. A wall-clock timeout kills the whole process group.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from services.common.errors import InvalidArgument


class Outcome(enum.Enum):
    """The verdict of a verifier (mirrors the proto's VerifyOutcome)."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    NO_ANSWER = "no_answer"
    TIMEOUT = "timeout"
    CRASHED = "crashed"


@dataclass(frozen=True)
class Verdict:
    """What a verifier concluded."""

    score: float
    outcome: Outcome
    detail: str


ARITHMETIC = "arithmetic"
MATH = "math"
CODE = "code"
KINDS = (ARITHMETIC, MATH, CODE)

# ----- numbers and math answers ----------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
_THOUSANDS = re.compile(r"(?<![\d.])(-?\d{1,3}(?:,\d{3})+)(?![\d])")


def _to_fraction(text: str) -> Fraction | None:
    """An exact rational for an integer, decimal or ``a/b`` string; None otherwise."""
    text = text.strip()
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/[-+]?\d+(\.\d*)?)?", text) or len(text) > 60:
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def verify_arithmetic(answer: str, reference: str) -> Verdict:
    """The final number in ``answer`` equals ``reference`` exactly (integers, decimals, a/b)."""
    expected = _to_fraction(reference.replace(",", ""))
    if expected is None:
        raise InvalidArgument(f"reference={reference!r}: the arithmetic verifier expects a number")
    found = _NUMBER.findall(_THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), answer))
    if not found:
        return Verdict(0.0, Outcome.NO_ANSWER, "no number in the answer")
    value = _to_fraction(found[-1])
    if value is not None and value == expected:
        return Verdict(1.0, Outcome.CORRECT, f"answer {found[-1]}")
    return Verdict(0.0, Outcome.INCORRECT, f"answer {found[-1]}, expected {reference}")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group opening at ``text[start]`` and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def extract_math_answer(text: str) -> str | None:
    """The final answer in ``text``: the last ``\\boxed{}``, else after "answer is"/"Answer:", else the last number."""
    for command in ("\\boxed", "\\fbox"):
        at = text.rfind(command + "{")
        if at >= 0:
            group = _braced(text, at + len(command))
            if group is not None:
                return group[0]
    said = list(re.finditer(r"(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", text, flags=re.IGNORECASE))
    if said:
        line = said[-1].group(1).strip().splitlines()[0].strip()
        return re.sub(r"[.\s]+$", "", line) or None
    numbers = re.findall(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?", text)
    return numbers[-1] if numbers else None


def _replace_frac(s: str) -> str:
    """``\\frac{a}{b}`` (and ``\\frac12``) to ``((a)/(b))``, innermost groups included."""
    while True:
        at = s.find("\\frac")
        if at < 0:
            return s
        rest = at + len("\\frac")
        parts: list[str] = []
        for _ in range(2):
            while rest < len(s) and s[rest] == " ":
                rest += 1
            group = _braced(s, rest)
            if group is not None:
                parts.append(group[0])
                rest = group[1]
            elif rest < len(s):
                parts.append(s[rest])
                rest += 1
            else:
                return s
        s = s[:at] + f"(({parts[0]})/({parts[1]}))" + s[rest:]


def normalize_math(answer: str) -> str:
    """A plain expression for a LaTeX-ish answer: units, spacing and markup removed."""
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\(?:left|right|displaystyle|,|;|!|:| )", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s).replace("{,}", "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "").replace("\\$", "")
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    s = _replace_frac(s)
    s = re.sub(r"\\sqrt\s*\{", "sqrt{", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"sqrt(\1)", s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/").replace("\\pi", "pi")
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    # Units or words after a number ("12 cm", "5 apples") are not part of the value.
    s = re.sub(r"^(-?[\d.]+(?:\s*/\s*[\d.]+)?)\s+[a-zA-Z][a-zA-Z ]*$", r"\1", s.strip())
    return re.sub(r"\s+", "", s).rstrip(".")


_SAFE_EXPRESSION = re.compile(r"[0-9+\-*/().a-z,]*")
_ALLOWED_NAMES = {"sqrt", "pi"}


def _sympy_value(expr: str) -> Any:
    """A sympy expression for a whitelisted, size-bounded ``expr``; None if it is not one."""
    if len(expr) > 120 or not _SAFE_EXPRESSION.fullmatch(expr):
        return None
    if set(re.findall(r"[a-z]+", expr)) - _ALLOWED_NAMES:
        return None
    if any(len(d) > 15 for d in re.findall(r"\d+", expr)) or expr.count("**") > 2:
        return None
    if re.search(r"\*\*\(?-?\d{3,}", expr):
        return None
    import sympy
    from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations

    try:
        return parse_expr(
            expr,
            local_dict={"sqrt": sympy.sqrt, "pi": sympy.pi},
            global_dict={
                "__builtins__": {},
                "Integer": sympy.Integer,
                "Float": sympy.Float,
                "Rational": sympy.Rational,
                "Symbol": sympy.Symbol,
            },
            transformations=(*standard_transformations, implicit_multiplication_application),
            evaluate=True,
        )
    except Exception:  # any parse failure means "not an expression we can compare"
        return None


def _equal(a: str, b: str) -> bool:
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is not None and fb is not None:
        return fa == fb
    va, vb = _sympy_value(a), _sympy_value(b)
    if va is None or vb is None:
        return a == b
    import sympy

    try:
        if va.free_symbols or vb.free_symbols:
            return bool(sympy.simplify(va - vb) == 0)
        diff = complex(sympy.N(va - vb, 30))
        scale = max(1.0, abs(complex(sympy.N(vb, 30))))
        return abs(diff) <= 1e-12 * scale
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return False


def verify_math(answer: str, reference: str) -> Verdict:
    """The answer's final value equals the reference's: integers, decimals, fractions, ``\\frac``, ``\\boxed``,
    radicals and other equivalent forms; tuples element by element."""
    extracted = extract_math_answer(answer)
    if extracted is None or not extracted.strip():
        return Verdict(0.0, Outcome.NO_ANSWER, "no final answer found")
    ref_raw = extract_math_answer(reference) if "\\boxed" in reference else reference
    got, want = normalize_math(extracted), normalize_math(ref_raw or reference)
    got_parts, want_parts = got.strip("()").split(","), want.strip("()").split(",")
    if len(got_parts) > 1 or len(want_parts) > 1:
        ok = len(got_parts) == len(want_parts) and all(_equal(x, y) for x, y in zip(got_parts, want_parts, strict=True))
    else:
        ok = _equal(got, want)
    if ok:
        return Verdict(1.0, Outcome.CORRECT, f"answer {extracted!r}")
    return Verdict(0.0, Outcome.INCORRECT, f"answer {extracted!r} ({got}), expected {reference!r} ({want})")


# ----- code ----------------------------------------------------------------------------------------

_HARNESS = r"""
import ast, json, socket, sys
# Sandbox first, in this fresh single-threaded interpreter: doing it in a preexec_fn between fork and
# exec of a multi-threaded server (gRPC, torch threads) crashed the child with SIGSEGV under load.
import ctypes, resource
_limits = json.loads(sys.argv[1])
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.unshare(0x40000000) != 0:  # CLONE_NEWNET; else with CLONE_NEWUSER where unprivileged
        _libc.unshare(0x10000000 | 0x40000000)
except OSError:
    pass
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (_limits["output_bytes"], _limits["output_bytes"]))
resource.setrlimit(resource.RLIMIT_CPU, (_limits["cpu_s"], _limits["cpu_s"] + 1))
resource.setrlimit(resource.RLIMIT_AS, (_limits["memory_bytes"], _limits["memory_bytes"]))
def _refuse(*args, **kwargs):
    raise OSError("network access is disabled in the verifier sandbox")
for _name in ("socket", "create_connection", "getaddrinfo", "socketpair", "fromfd", "create_server"):
    setattr(socket, _name, _refuse)
_payload = json.loads(sys.stdin.read())
_nonce = _payload["nonce"]
def _report(**result):
    sys.__stdout__.write("\n" + _nonce + json.dumps(result) + "\n")
    sys.__stdout__.flush()
_namespace = {"__name__": "__main__"}
try:
    exec(compile(_payload["code"], "<answer>", "exec"), _namespace)
except BaseException as exc:
    _report(phase="answer", error=type(exc).__name__ + ": " + str(exc)[:200])
    raise SystemExit(0)
_passed = 0
_total = 0
_first = ""
try:
    _tree = ast.parse(_payload["tests"])
except SyntaxError as exc:
    _report(phase="tests", error="SyntaxError in tests: " + str(exc)[:200])
    raise SystemExit(0)
for _stmt in _tree.body:
    _is_test = isinstance(_stmt, ast.Assert)
    _total += _is_test
    try:
        exec(compile(ast.Module(body=[_stmt], type_ignores=[]), "<tests>", "exec"), _namespace)
        _passed += _is_test
    except MemoryError:
        _report(phase="tests", error="MemoryError", passed=_passed, total=_total)
        raise SystemExit(0)
    except BaseException as exc:
        if not _is_test:
            _report(phase="tests", error="setup failed: " + type(exc).__name__ + ": " + str(exc)[:200])
            raise SystemExit(0)
        if not _first:
            _first = (ast.get_source_segment(_payload["tests"], _stmt) or "?")[:200] + " -> " + type(exc).__name__
_report(phase="done", passed=_passed, total=_total, first_failure=_first)
"""


def extract_code(answer: str) -> str:
    """The last fenced code block of ``answer``, or the whole answer when it has none."""
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", answer, flags=re.DOTALL)
    return blocks[-1] if blocks else answer


async def verify_code(
    answer: str, tests: str, *, timeout_s: float, memory_bytes: int, output_bytes: int = 1 << 20
) -> Verdict:
    """Run the answer, then each ``assert`` of ``tests``, in a sandboxed subprocess; score = fraction passed."""
    code = extract_code(answer)
    if not code.strip():
        return Verdict(0.0, Outcome.NO_ANSWER, "no code in the answer")
    nonce = secrets.token_hex(16)
    payload = json.dumps({"code": code, "tests": tests, "nonce": nonce}).encode()
    with tempfile.TemporaryDirectory(prefix="verify-") as workdir:
        out_path = os.path.join(workdir, "stdout")
        # Opening two local files blocks for microseconds; the child's output goes to a capped file.
        with open(out_path, "wb") as out, open(os.devnull, "wb") as err:  # noqa: ASYNC230
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                "-c",
                _HARNESS,
                json.dumps(
                    {"memory_bytes": memory_bytes, "cpu_s": max(1, math.ceil(timeout_s)), "output_bytes": output_bytes}
                ),
                stdin=asyncio.subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
                start_new_session=True,  # its own process group, so a timeout kills everything it started
            )
            started = time.monotonic()
            try:
                await asyncio.wait_for(proc.communicate(payload), timeout=timeout_s)
            except TimeoutError:
                _kill_group(proc.pid)
                await proc.wait()
                return Verdict(0.0, Outcome.TIMEOUT, f"ran past its time limit of {timeout_s:g} s")
            finally:
                if proc.returncode is None:
                    _kill_group(proc.pid)
                    await proc.wait()
        with open(out_path, "rb") as f:  # noqa: ASYNC230
            output = f.read().decode("utf-8", errors="replace")
    result = None
    for line in reversed(output.splitlines()):
        if line.startswith(nonce):
            result = json.loads(line[len(nonce) :])
            break
    if result is None:
        code_ = proc.returncode
        if code_ is not None and code_ < 0:
            why = signal.Signals(-code_).name
            if -code_ == signal.SIGXCPU:
                return Verdict(0.0, Outcome.TIMEOUT, "exceeded its CPU time limit (SIGXCPU)")
            if time.monotonic() - started >= timeout_s:
                # Killed at or after the deadline (the CPU hard limit, or our kill racing the exit on a
                # loaded machine): the answer ran out of time, whatever signal ended it.
                return Verdict(0.0, Outcome.TIMEOUT, f"ran past its time limit of {timeout_s:g} s ({why})")
            return Verdict(0.0, Outcome.CRASHED, f"killed by {why}")
        return Verdict(0.0, Outcome.CRASHED, f"exited with status {code_} before reporting")
    if result.get("error"):
        error = str(result["error"])
        outcome = Outcome.CRASHED
        passed, total = int(result.get("passed", 0)), int(result.get("total", 0))
        return Verdict(passed / total if total else 0.0, outcome, f"{result['phase']}: {error}")
    passed, total = int(result["passed"]), int(result["total"])
    if total == 0:
        raise InvalidArgument("reference: the code verifier needs at least one assert statement as a test")
    score = passed / total
    if passed == total:
        return Verdict(1.0, Outcome.CORRECT, f"{passed}/{total} tests passed")
    return Verdict(score, Outcome.INCORRECT, f"{passed}/{total} tests passed; first failure: {result['first_failure']}")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Verifiers:
    """The verifiers behind one call; code runs at most ``max_concurrent_code`` sandboxes at once."""

    def __init__(self, *, code_timeout_s: float, code_memory_bytes: int, max_concurrent_code: int) -> None:
        self.code_timeout_s = code_timeout_s
        self.code_memory_bytes = code_memory_bytes
        self._code_slots = asyncio.Semaphore(max_concurrent_code)

    async def verify(self, kind: str, answer: str, reference: str, timeout_s: float = 0.0) -> Verdict:
        """Score ``answer`` against ``reference`` with verifier ``kind``; InvalidArgument for a bad kind/reference."""
        if kind == ARITHMETIC:
            return verify_arithmetic(answer, reference)
        if kind == MATH:
            if not reference.strip():
                raise InvalidArgument("reference is empty: the math verifier needs the expected answer")
            return await asyncio.to_thread(verify_math, answer, reference)
        if kind == CODE:
            if timeout_s < 0 or not math.isfinite(timeout_s):
                raise InvalidArgument(f"timeout_s={timeout_s}: expected >= 0")
            limit = min(timeout_s, self.code_timeout_s) if timeout_s > 0 else self.code_timeout_s
            async with self._code_slots:
                return await verify_code(answer, reference, timeout_s=limit, memory_bytes=self.code_memory_bytes)
        raise InvalidArgument(f"verifier={kind!r}: expected one of {KINDS}")
