"""The long fuzz run of the MQTT parser: Hypothesis with many examples, one minimal example per failure class.

    python -m benchmarks.fuzz_parse [--examples N | --seconds S] [--seed N]

Draws topics, payloads (JSON of every channel with hostile fields, raw bytes, JPEG-like bytes) from
``tests/support/parse_fuzz.py`` and checks the same properties as the suite's property tests: nothing
escapes ``parse_message``, every input is stored or quarantined with a reason (never ``internal_error``),
accepted text passes the text rule, quarantine rows and live frames build. A failure is shrunk to a
minimal example, recorded under its class (exception type and message, digits folded), and the run
goes on looking for other classes. Prints inputs tried and each failure class; exits 1 on any.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import HypothesisWarning

from tests.support.parse_fuzz import all_messages, check_message

ROUND_EXAMPLES = 5_000  # examples per Hypothesis run between time checks


@dataclass
class Fuzz:
    """State of one fuzz run."""

    deadline: float
    tried: int = 0
    failures: dict[str, tuple[tuple[str, bytes, bool], str]] = field(default_factory=dict)
    last: tuple[tuple[str, bytes, bool], str, str] | None = None

    def check(self, message: tuple[str, bytes, bool]) -> None:
        if time.monotonic() > self.deadline:
            return
        self.tried += 1
        try:
            check_message(*message)
        except Exception as err:  # every failure is a finding
            text = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            key = re.sub(r"\d+", "N", text)[:200]
            if key in self.failures:
                return  # known class: keep looking for others
            self.last = (message, key, text)
            raise


def _show(message: tuple[str, bytes, bool]) -> str:
    topic, payload, retained = message
    shown = repr(payload) if len(payload) <= 300 else repr(payload[:300]) + f"... ({len(payload)} bytes)"
    return f"topic={topic!r} payload={shown}" + (" retained" if retained else "")


def run(examples: int | None, seconds: float | None, base_seed: int) -> Fuzz:
    """Fuzz until ``examples`` inputs were tried or ``seconds`` passed."""
    fuzz = Fuzz(deadline=time.monotonic() + seconds if seconds else float("inf"))
    rounds = 0
    while True:
        left = (examples - fuzz.tried) if examples else ROUND_EXAMPLES
        if left <= 0 or time.monotonic() > fuzz.deadline:
            break
        fuzz.last = None

        @seed(base_seed + rounds)
        @settings(max_examples=min(left, ROUND_EXAMPLES), deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                  phases=[Phase.generate, Phase.shrink])
        @given(all_messages)
        def one_round(message: tuple[str, bytes, bool]) -> None:
            fuzz.check(message)

        rounds += 1
        try:
            one_round()
        except Exception:  # shrunk: the last failing input is the minimal one
            if fuzz.last is None:
                raise
            message, key, text = fuzz.last
            fuzz.failures[key] = (message, text)
            print(f"failure {len(fuzz.failures)}: {text[:300]}\n    minimal: {_show(message)}", flush=True)
    return fuzz


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer and print the figures; 1 if any failure was found."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--examples", type=int, help="try this many inputs (default 50,000)")
    group.add_argument("--seconds", type=float, help="fuzz for about this long instead")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first round (rounds count up from it)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=HypothesisWarning)  # "overly large repr" of huge numbers
    examples = None if args.seconds else (args.examples or 50_000)
    started = time.monotonic()
    fuzz = run(examples, args.seconds, args.seed)
    took = time.monotonic() - started
    summary: dict[str, Any] = {"inputs tried": fuzz.tried, "failure classes": len(fuzz.failures),
                               "seconds": round(took, 1), "inputs/s": round(fuzz.tried / max(took, 1e-9))}
    print("fuzz_parse: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in summary.items()))
    for i, (message, text) in enumerate(fuzz.failures.values(), 1):
        print(f"  {i}. {text[:300]}\n     minimal: {_show(message)}")
    return 1 if fuzz.failures else 0


if __name__ == "__main__":
    sys.exit(main())
