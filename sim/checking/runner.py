"""Runs the state machines and collects violations with hypothesis's shrunk sequence of operations. Both the test
suite and `sim check` call `check_allocator`."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase
from hypothesis import settings as Settings
from hypothesis.errors import Flaky
from hypothesis.reporting import with_reporter
from hypothesis.stateful import run_state_machine_as_test

from sim.checking import INVARIANTS
from sim.checking.invariants import InvariantViolation
from sim.checking.machine import AllocatorSpec, make_machine


@dataclass
class Violation:
    """One violated invariant, with the shrunk operations that show it."""

    invariant: str  # a key of INVARIANTS, or "error" for an exception the machine itself did not expect
    message: str
    steps: list[str] = field(default_factory=list)

    def format(self) -> str:
        head = f"VIOLATED {self.invariant}: {INVARIANTS.get(self.invariant, 'unexpected error')}\n  {self.message}"
        if self.steps:
            head += "\n  shrunk sequence of operations:\n" + "\n".join(f"    {s}" for s in self.steps)
        return head


def specs_for(cls: type, address_space: str | None = None) -> list[AllocatorSpec]:
    """One spec per configuration worth checking: contiguous allocators with each address-space policy."""
    if address_space is not None:
        return [AllocatorSpec(cls, {"address_space": address_space})]
    if hasattr(cls, "address_space_policy"):
        from sim.allocators.address_space import ADDRESS_SPACES

        return [AllocatorSpec(cls, {"address_space": p}) for p in ADDRESS_SPACES]
    return [AllocatorSpec(cls)]


def suite_settings(base: Settings | None = None, scale: int = 1, **overrides) -> Settings:
    """Settings for the machines: the loaded profile (ci / thorough) with max_examples scaled."""
    base = base or Settings()
    kwargs = dict(
        max_examples=base.max_examples * scale,
        deadline=None,
        suppress_health_check=list(base.suppress_health_check) + [HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    kwargs.update(overrides)
    return Settings(base, **kwargs)


def run_machine(spec: AllocatorSpec, settings: Settings, disabled: frozenset[str] = frozenset()) -> Violation | None:
    """Run one machine; None if every example passed, else the (shrunk) violation found."""
    machine = make_machine(spec, disabled)
    lines: list[str] = []
    try:
        with with_reporter(lines.append):
            run_state_machine_as_test(
                machine,
                settings=Settings(
                    settings,
                    report_multiple_bugs=False,
                    print_blob=False,
                    phases=[p for p in settings.phases if p is not Phase.explain],
                ),
            )  # explaining costs as much as shrinking
    except InvariantViolation as exc:
        return Violation(exc.invariant, exc.detail, _steps(lines + getattr(exc, "__notes__", [])))
    except Flaky as exc:
        return Violation(
            "error",
            f"the allocator behaves non-deterministically (flaky): {exc}",
            _steps(lines + getattr(exc, "__notes__", [])),
        )
    except Exception as exc:  # noqa: BLE001 - an error inside the machine: report it with the steps
        return Violation(
            "error",
            "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[0],
            _steps(lines + getattr(exc, "__notes__", [])),
        )
    return None


def _steps(lines: list[str]) -> list[str]:
    out: list[str] = []
    for text in lines:
        for line in str(text).splitlines():
            line = line.rstrip()
            if ("state." in line or line.startswith("state =")) and not line.endswith(
                ("state.invariants()", "state.teardown()")
            ):
                out.append(line)
    return out


def check_allocator(spec: AllocatorSpec, settings: Settings, max_violations: int = 5) -> list[Violation]:
    """Every violated invariant (up to max_violations): after each violation found, that invariant is switched off
    and the search runs again, so one bug does not hide another."""
    found: list[Violation] = []
    disabled: set[str] = set()
    while len(found) < max_violations:
        v = run_machine(spec, settings, frozenset(disabled))
        if v is None or v.invariant in disabled:  # an invariant that cannot be switched off (a crash) recurs
            break
        found.append(v)
        if v.invariant not in INVARIANTS:
            break
        disabled.add(v.invariant)
    return found


__all__ = ["AllocatorSpec", "Phase", "Violation", "check_allocator", "run_machine", "specs_for", "suite_settings"]
