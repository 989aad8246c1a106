"""A user's own class named on the command line as 'package.module:ClassName' (allocators, schedulers): imported,
checked for the methods its interface needs, and every failure a UserError that says what went wrong."""

from __future__ import annotations

import importlib

from sim.errors import UserError


def load_class(
    spec: str, registry: dict[str, type], required: tuple[str, ...], what: str, interface: str, noun: str = ""
) -> type:
    """The class registered as `spec`, or the class 'package.module:ClassName' names, which must have the `required`
    methods. `what` names the kind in messages ("allocator"), `noun` what a class lacking methods is not ("a KV
    allocator"; default "a <what>"), `interface` where the interface is documented."""
    if spec in registry:
        return registry[spec]
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(
            f"unknown {what} {spec!r}; registered: {', '.join(registry)} "
            f"(or give your own class as package.module:ClassName)"
        )
    module_name, _, class_name = spec.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not class_name.isidentifier():
        raise UserError(
            f"{what} {spec!r} is not package.module:ClassName (dotted names, no relative import); "
            f"registered: {', '.join(registry)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {what} module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself fails while importing: say so, without a traceback
        raise UserError(f"importing {what} module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UserError(f"{what} {spec}: module {module_name!r} has no class {class_name!r}")
    missing = [m for m in required if not callable(getattr(cls, m, None))]
    if missing:
        raise UserError(f"{spec} is not {noun or 'a ' + what}: it lacks {', '.join(missing)} (see {interface})")
    return cls
