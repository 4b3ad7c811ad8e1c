"""What the mock upstream does with a request: ``Behaviour`` (one set of faults) and ``MockConfig``.

The fields of ``Behaviour`` are also its command-line flags (``--rate-limit-rate``), its
per-request override headers (``x-mock-rate-limit-rate``) and its JSON keys in ``POST
/_config``: ``OPTIONS`` lists them once, with the kind of value each takes, and every
front end reads that table. This module imports no trio, so ``fusillade --help`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

Kind = Literal["float", "int", "bool", "opt_float", "opt_int", "opt_bool", "str"]

RETRY_AFTER_FORMATS = ("both", "seconds", "ms", "date")
HEADER_PREFIX = "x-mock-"
# Short header names for the overrides tests use most.
HEADER_ALIASES = {"x-mock-delay": "latency"}


def _finite_at_least_zero(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _probability(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _error_status(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not 400 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an HTTP error status (400-599), got {value!r}")


def _count(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 (or unset for no limit), got {value!r}")


def _limit() -> Any:
    return attrs.field(default=None, validator=_positive)


def _retry_after_format(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in RETRY_AFTER_FORMATS:
        raise ValueError(f"{attribute.name} must be one of {', '.join(RETRY_AFTER_FORMATS)}")


def _rate() -> Any:
    return attrs.field(default=0.0, validator=_probability)


@attrs.frozen(kw_only=True)
class Behaviour:
    """How to answer a request; the checks run in the order of the fields below.

    First the rate limits, as OpenAI enforces them (``_limits``): ``rpm`` and ``tpm`` (per
    minute, and also over every ``rate_window`` seconds at the same rate, rounded up) and
    ``max_in_flight``, counted per model for a per-model behaviour, over all requests for the
    default one; a request over one gets a 429 with ``retry-after`` and takes nothing. A
    request costs ``ceil(len(body) / 4)`` tokens plus its ``max_completion_tokens`` /
    ``max_tokens`` / ``max_output_tokens`` (else 16). Every answer to an admitted or refused
    request carries OpenAI's ``x-ratelimit-{limit,remaining,reset}-requests`` headers while
    ``rpm`` is set, and the ``-tokens`` ones while ``tpm`` is set.

    With ``hold``, until the server's ``release_held()``, then after ``latency`` (plus up to
    ``latency_jitter``): ``status`` answers that status with an error envelope; else a
    ``timeout_rate`` draw never answers (the request hangs until the client goes away); a
    ``reset_rate`` draw drops the connection without an answer (TCP RST); a 429 comes when the
    request is among the first ``rate_limit_first`` since the last reset (counted per model for
    a per-model behaviour, over all requests for the default one), when it is one of the first
    ``rate_limit_attempts`` attempts of its ``X-Fusillade-Request-Id`` since the last reset
    (without the header: of its body, counted while this is set), or on a ``rate_limit_rate``
    draw; an ``error_rate`` draw answers 500; an
    ``invalid_json_rate`` draw answers 200 with a body that is not JSON; else the normal answer.
    429 and 503 answers carry ``retry_after`` (when set) as ``retry_after_format`` says
    (``both``: ``retry-after`` in whole seconds, rounded up, and ``retry-after-ms``); error
    answers carry ``x-should-retry`` when ``should_retry`` is set. ``slow_body`` spreads the
    sending of the body over that many seconds.
    """

    rpm: int | None = _limit()
    tpm: int | None = _limit()
    max_in_flight: int | None = _limit()
    rate_window: float = attrs.field(default=1.0, validator=_finite_at_least_zero)
    latency: float = attrs.field(default=0.0, validator=_finite_at_least_zero)
    latency_jitter: float = attrs.field(default=0.0, validator=_finite_at_least_zero)
    hold: bool = False
    status: int | None = attrs.field(default=None, validator=_error_status)
    timeout_rate: float = _rate()
    reset_rate: float = _rate()
    rate_limit_first: int = attrs.field(default=0, validator=_count)
    rate_limit_attempts: int = attrs.field(default=0, validator=_count)
    rate_limit_rate: float = _rate()
    error_rate: float = _rate()
    invalid_json_rate: float = _rate()
    retry_after: float | None = attrs.field(default=None, validator=_finite_at_least_zero)
    retry_after_format: str = attrs.field(default="both", validator=_retry_after_format)
    should_retry: bool | None = None
    slow_body: float = attrs.field(default=0.0, validator=_finite_at_least_zero)

    @classmethod
    def from_json(cls, data: object) -> Behaviour:
        """A behaviour from a JSON object of field values; absent fields keep their defaults.

        Raises:
            ValueError: not an object, an unknown field, a value of the wrong type or range.
        """
        if not isinstance(data, Mapping):
            raise ValueError("a behaviour must be a JSON object")  # noqa: TRY004 (answered 400)
        kinds = {option.name: option.kind for option in OPTIONS}
        values: dict[str, Any] = {}
        for key, value in data.items():
            kind = kinds.get(key)
            if kind is None:
                raise ValueError(f"unknown behaviour field {key!r}")
            values[key] = _from_json_value(key, kind, value)
        return cls(**values)

    def with_headers(self, headers: Mapping[str, str]) -> Behaviour:
        """This behaviour with the request's ``x-mock-<field>`` headers applied (names lowercase).

        Raises:
            ValueError: an unknown ``x-mock-`` header or a value that does not parse.
        """
        changes: dict[str, Any] = {}
        for name, text in headers.items():
            if not name.startswith(HEADER_PREFIX):
                continue
            field = HEADER_ALIASES.get(name) or name[len(HEADER_PREFIX) :].replace("-", "_")
            option = OPTIONS_BY_NAME.get(field)
            if option is None:
                raise ValueError(f"unknown mock header {name!r}")
            try:
                changes[field] = option.parse(text)
            except ValueError as exc:
                raise ValueError(f"header {name}: {exc}") from None
        return attrs.evolve(self, **changes) if changes else self

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _from_json_value(key: str, kind: Kind, value: object) -> object:
    if value is None and kind.startswith("opt_"):
        return None
    base = kind.removeprefix("opt_")
    if isinstance(value, bool):  # an int to Python, never a number here
        ok = base == "bool"
    elif isinstance(value, int | float):
        if base == "float":
            return float(value)
        ok = base == "int" and isinstance(value, int)
    else:
        ok = base == "str" and isinstance(value, str)
    if not ok:
        raise ValueError(f"{key} must be {'null or ' if base != kind else ''}a {base}")
    return value


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _optional(parse: Callable[[str], object]) -> Callable[[str], object]:
    def parse_optional(text: str) -> object:
        return None if text.strip().lower() in ("", "none", "null") else parse(text)

    return parse_optional


_PARSERS: dict[Kind, Callable[[str], object]] = {
    "float": float,
    "int": int,
    "bool": _parse_bool,
    "str": str,
    "opt_float": _optional(float),
    "opt_int": _optional(int),
    "opt_bool": _optional(_parse_bool),
}


@attrs.frozen
class Option:
    """One ``Behaviour`` field as a flag, a header and a JSON key."""

    name: str
    kind: Kind
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> object:
        """The field's value from flag or header text (``ValueError`` if it does not parse)."""
        return _PARSERS[self.kind](text)


OPTIONS: tuple[Option, ...] = (
    Option("rpm", "opt_int", "N", "requests per minute, enforced like OpenAI (429 beyond)"),
    Option("tpm", "opt_int", "N", "tokens per minute (body bytes / 4 + max_tokens, else 16)"),
    Option("max_in_flight", "opt_int", "N", "answer 429 while N requests are being answered"),
    Option(
        "rate_window", "float", "SECONDS", "also hold rpm/tpm pro rata per this window (0: off)"
    ),
    Option("latency", "float", "SECONDS", "fixed delay before answering"),
    Option("latency_jitter", "float", "SECONDS", "plus a uniform random delay up to this"),
    Option("hold", "bool", "", "hold each request until POST /_release (or release_held())"),
    Option("status", "opt_int", "CODE", "always answer this status with an error envelope"),
    Option("timeout_rate", "float", "P", "fraction of requests never answered"),
    Option("reset_rate", "float", "P", "fraction of connections reset without an answer"),
    Option("rate_limit_first", "int", "N", "answer 429 to the first N requests"),
    Option("rate_limit_attempts", "int", "N", "answer 429 to each request id's first N attempts"),
    Option("rate_limit_rate", "float", "P", "fraction of requests answered 429"),
    Option("error_rate", "float", "P", "fraction of requests answered 500"),
    Option("invalid_json_rate", "float", "P", "fraction answered 200 with a body that is not JSON"),
    Option("retry_after", "opt_float", "SECONDS", "retry-after of 429 and 503 answers"),
    Option("retry_after_format", "str", "FORMAT", "both (default), seconds, ms or date"),
    Option("should_retry", "opt_bool", "BOOL", "send x-should-retry on error answers"),
    Option("slow_body", "float", "SECONDS", "drip each body over this long (default 1 s)"),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


@attrs.define(kw_only=True)
class MockConfig:
    """The mock upstream's behaviour; mutable on purpose: tests change it while the server runs.

    ``per_model`` picks the behaviour by the request body's ``model`` (``default`` otherwise);
    a request's ``x-mock-*`` headers then override fields of it. ``seed`` seeds the random
    draws (the server reseeds when it changes, and on reset).
    """

    default: Behaviour = attrs.Factory(Behaviour)
    per_model: dict[str, Behaviour] = attrs.Factory(dict)
    seed: int = 0

    def behaviour_for(self, model: str) -> Behaviour:
        return self.per_model.get(model, self.default)

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default.to_json(),
            "per_model": {model: b.to_json() for model, b in self.per_model.items()},
            "seed": self.seed,
        }

    def update_from_json(self, data: object) -> None:
        """Apply a ``POST /_config`` body: each key given replaces that part whole.

        ``{"default": {...}, "per_model": {"model": {...}}, "seed": 1}``; behaviours list only
        the fields that differ from ``Behaviour()``. Nothing changes unless all of it is valid.

        Raises:
            ValueError: an unknown key or an invalid behaviour.
        """
        if not isinstance(data, Mapping):
            raise ValueError("the configuration must be a JSON object")  # noqa: TRY004 (answered 400)
        unknown = set(data) - {"default", "per_model", "seed"}
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        default = Behaviour.from_json(data["default"]) if "default" in data else self.default
        per_model = self.per_model
        if "per_model" in data:
            if not isinstance(data["per_model"], Mapping):
                raise ValueError("per_model must be an object of model -> behaviour")
            per_model = {str(m): Behaviour.from_json(b) for m, b in data["per_model"].items()}
        seed = data.get("seed", self.seed)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("seed must be an integer")  # noqa: TRY004 (answered 400)
        self.default, self.per_model, self.seed = default, per_model, seed
