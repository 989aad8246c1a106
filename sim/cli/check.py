"""`sim check ALLOCATOR`: run the property-based invariant checks (sim.checking) against any allocator.

Needs hypothesis (the `test` extra); without it the command says so and exits 2. Nothing here is imported by
`import sim` or `sim replay`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="check an allocator against the invariants (random operation sequences, shrunk failures)",
        description="Drive random sequences of admit / append / fork / free / preempt / re-admit / drain against an "
        "allocator and check every invariant after every step (see sim.checking.INVARIANTS). Each "
        "violated invariant is printed with hypothesis's shrunk sequence of operations. Exit status: 0 "
        "all invariants hold, 1 some invariant is violated, 2 usage error.",
    )
    p.add_argument("allocator", help="a registered allocator (see `sim allocators`) or package.module:ClassName")
    p.add_argument(
        "--address-space",
        choices=["buddy", "first-fit"],
        help="contiguous allocators: check only this address-space policy (default: each)",
    )
    p.add_argument(
        "--examples", type=int, default=300, help="random operation sequences per configuration (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=50, help="operations per sequence, at most (default: %(default)s)")
    p.add_argument(
        "--max-violations",
        type=int,
        default=5,
        help="stop after this many violated invariants per configuration (default: %(default)s)",
    )
    p.add_argument(
        "--derandomize",
        action="store_true",
        help="a deterministic search: the same sequences every run (default: random)",
    )
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        print(
            "sim: error: `sim check` needs hypothesis, which is not installed: pip install 'kvsim[test]'",
            file=sys.stderr,
        )
        return 2
    from hypothesis import settings as Settings

    from sim.allocators import resolve_allocator
    from sim.checking import INVARIANTS
    from sim.checking.runner import check_allocator, specs_for
    from sim.errors import UserError

    if args.examples <= 0 or args.steps <= 0 or args.max_violations <= 0:
        raise UserError("--examples, --steps and --max-violations must be positive")
    if ":" in args.allocator and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a user's module next to where they run the command
    cls = resolve_allocator(args.allocator)
    if args.address_space is not None and not hasattr(cls, "address_space_policy"):
        raise UserError(f"--address-space applies to contiguous allocators, not {args.allocator}")
    settings = Settings(
        max_examples=args.examples,
        stateful_step_count=args.steps,
        deadline=None,
        database=None,
        derandomize=args.derandomize,
    )
    print(
        f"checking {args.allocator}: {len(INVARIANTS)} invariants after every step, {args.examples} sequences of up "
        f"to {args.steps} operations per configuration"
    )
    failed = 0
    for spec in specs_for(cls, args.address_space):
        label = spec.name if spec.kwargs else args.allocator
        t0 = time.perf_counter()
        violations = check_allocator(spec, settings, args.max_violations)
        took = time.perf_counter() - t0
        if not violations:
            print(f"  {label}: OK ({took:.1f} s)")
            continue
        failed += 1
        names = ", ".join(v.invariant for v in violations)
        print(f"  {label}: {len(violations)} violated ({names}) ({took:.1f} s)\n")
        for v in violations:
            print(v.format())
            print()
    return 1 if failed else 0
