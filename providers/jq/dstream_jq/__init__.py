"""``jq-transform-provider``: a jq program applied to every envelope.

The program sees the whole envelope (``{"data": …, "metadata": …}``) and may emit zero or
more objects for it: ``select(…)`` filters, ``del(.data.ssn)`` drops a column, ``.[]``-style
programs fan out. ``null`` or no output drops the envelope. A jq runtime error, or a
result that is not an object, rejects the envelope with the reason (a ``dead_letter`` line:
the task's ``on_error`` decides). The program is compiled once, when the provider starts;
a syntax error is a config error naming the problem.
"""

from __future__ import annotations

from typing import Any

import jq
from pydantic import Field, ValidationInfo, field_validator

from dstream.sdk import Envelope, ProviderConfig, Reject, TransformProvider

__all__ = ["JqConfig", "JqTransformProvider", "main"]


class JqConfig(ProviderConfig):
    # args before program: the program is compiled with them when it is validated.
    args: dict[str, Any] = Field(default_factory=dict, description="named arguments, available in the program as $name")
    program: str = Field(default=".", description="the jq program, applied to each envelope")

    @field_validator("program")
    @classmethod
    def _compiles(cls, program: str, info: ValidationInfo) -> str:
        try:
            compile_program(program, info.data.get("args") or {})
        except ValueError as exc:
            # jq's own message ("jq: error: syntax error, unexpected … line 1, column 4").
            raise ValueError(" ".join(str(exc).split())) from None
        return program


def compile_program(program: str, args: dict[str, Any]) -> Any:
    return jq.compile(program, args=args) if args else jq.compile(program)


class JqTransformProvider(TransformProvider[JqConfig]):
    name = "jq-transform-provider"
    version = "0.1.0"
    Config = JqConfig

    def __init__(self, config: JqConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.program = compile_program(config.program, config.args)
        self.passthrough = config.program.strip() == "." and not config.args

    def transform(self, envelope: Envelope) -> list[Any]:
        if self.passthrough:
            return [envelope]
        try:
            results = self.program.input_text(envelope.raw.decode()).all()
        except ValueError as exc:
            raise Reject(f"jq: {exc}") from None
        out = []
        for result in results:
            if result is None:
                continue
            if not isinstance(result, dict):
                raise Reject(f"the jq program produced a {type(result).__name__}, not an object: {str(result)[:80]}")
            out.append(result)
        return out


main = JqTransformProvider.main
