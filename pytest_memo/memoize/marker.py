"""``pytest.mark.memo``: a mark that can be applied to fixtures.

pytest 9.1+ refuses marks on fixtures ("Marks cannot be applied to fixtures") and 8.4
warns, so ``pytest.mark.memo`` is this decorator instead of a generic mark: applied to a
fixture, or to the function under ``@pytest.fixture``, it records the memo options on the
function and stores no pytest mark; anywhere else it behaves as an ordinary mark.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_memo.pytest_compat import MARK_GEN, Mark, MarkDecorator, is_fixture_definition

__all__ = ["MemoOptions", "fixture_options", "memo", "options_of"]

OPTIONS_ATTRIBUTE = "__pytest_memo__"


@dataclass(frozen=True)
class MemoOptions:
    """What ``@pytest.mark.memo(...)`` was given."""

    version: object = None
    ignore: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    compress: object = None
    mmap: bool = False
    max_age: float | None = None  # seconds
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, kwargs: dict[str, Any], where: str = "pytest.mark.memo") -> MemoOptions:
        unknown = set(kwargs) - {"version", "ignore", "depends", "compress", "mmap", "max_age"}
        if unknown:
            raise TypeError(
                f"{where} got unknown option(s) {', '.join(sorted(unknown))}; "
                "valid options are version, ignore, depends, compress, mmap and max_age"
            )
        from pytest_memo.core import codecs  # here: it imports numpy and blosc

        codecs.parse_compress(kwargs.get("compress"))  # fail now, not at the first store
        return cls(
            version=kwargs.get("version"),
            ignore=_names(kwargs.get("ignore", ()), "ignore", where),
            depends=_names(kwargs.get("depends", ()), "depends", where),
            compress=kwargs.get("compress"),
            mmap=bool(kwargs.get("mmap", False)),
            max_age=parse_age(kwargs.get("max_age"), where),
        )


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(value: object, where: str = "pytest.mark.memo") -> float | None:
    """``max_age=``: seconds (a number), or a string such as ``"30m"``, ``"12h"``, ``"7d"``."""
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        unit = text[-1:] if text[-1:] in _AGE_UNITS else "s"
        number = text[:-1] if text[-1:] in _AGE_UNITS else text
        try:
            seconds = float(number) * _AGE_UNITS[unit]
        except ValueError:
            seconds = None
    if seconds is None or seconds != seconds or seconds <= 0:
        raise TypeError(
            f"{where}: max_age= takes a positive number of seconds or a duration such as "
            f"'30m', '12h' or '7d', got {value!r}"
        )
    return seconds


def _names(value: object, option: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise TypeError(f"{where}: {option}= takes a string or a list of strings, got {value!r}")


def options_of(function: Any) -> MemoOptions | None:
    """The memo options recorded on a fixture function, if it was marked."""
    for candidate in (function, getattr(function, "__func__", None)):
        options = getattr(candidate, OPTIONS_ATTRIBUTE, None)
        if isinstance(options, MemoOptions):
            return options
    return None


def fixture_options(fixturedef: Any, by_name: frozenset[str]) -> MemoOptions | None:
    """The memo options of a fixture definition: its mark's, or the defaults if it is named
    in ``by_name`` (the memo_fixtures ini option); None if it is not memoized."""
    options = options_of(fixturedef.func)
    if options is None and fixturedef.argname in by_name:
        return MemoOptions()
    return options


class MemoMarkDecorator(MarkDecorator):
    """What ``pytest.mark.memo`` returns once pytest-memo is loaded."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and (callable(args[0]) or is_fixture_definition(args[0])):
            target = args[0]
            if is_fixture_definition(target) or inspect.isfunction(target):
                options = MemoOptions.parse(dict(self.mark.kwargs))
                _record(target, options)
                return target
            return super().__call__(target)
        return self.with_args(*args, **kwargs)

    def with_args(self, *args: Any, **kwargs: Any) -> MemoMarkDecorator:
        if args:
            raise TypeError(
                "pytest.mark.memo takes keyword options only, for example "
                "@pytest.mark.memo(version=2, ignore=['tmp_path'])"
            )
        MemoOptions.parse(kwargs)
        mark = Mark(self.name, (), {**self.mark.kwargs, **kwargs}, _ispytest=True)
        return MemoMarkDecorator(mark, _ispytest=True)


def _record(target: Any, options: MemoOptions) -> None:
    """Store the options on the fixture object and on the function it wraps."""
    for obj in (target, getattr(target, "__wrapped__", None), getattr(target, "__func__", None)):
        if obj is not None:
            setattr(obj, OPTIONS_ATTRIBUTE, options)


memo = MemoMarkDecorator(Mark("memo", (), {}, _ispytest=True), _ispytest=True)
# ``pytest.mark`` looks instance attributes up before generating a generic mark.
MARK_GEN.memo = memo  # type: ignore[attr-defined]
