"""``jq-transform-provider``: a jq program applied to every envelope.

The program sees the whole envelope (``{"data": …, "metadata": …}``) and may emit zero or
more objects for it: ``select(…)`` filters, ``del(.data.ssn)`` drops a column, ``.[]``-style
programs fan out. ``null`` or no output drops the envelope. A jq runtime error, or a
result that is not an object, rejects the envelope with the reason (a ``dead_letter`` line:
the task's ``on_error`` decides). The program is compiled once, when the provider starts;
a syntax error is a config error naming the problem.

Speed: libjq runs over many records per call (``transform_batch``), the program wrapped as
``[PROGRAM]`` so each record gives exactly one array of its outputs. :meth:`transform`, one
record per call, is the reference the batches must match: a record whose batch result is an
error or a non-object goes through it (so its reason is exactly the one-by-one reason), and
a batch whose results cannot be attributed to records with certainty is done one by one.
"""

from __future__ import annotations

import re
from typing import Any

import jq
from pydantic import Field, ValidationInfo, field_validator

from dstream import protocol
from dstream.envelope import valid_block
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


def encode(value: dict[str, Any]) -> bytes:
    """One output line. jq numbers are doubles; the binding gives integral ones as Python
    ints, which orjson cannot write beyond 64 bits (1e300): those go back to floats."""
    try:
        return protocol.encode(value)
    except TypeError:
        return protocol.encode(_floats(value))


def _floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


def compile_program(program: str, args: dict[str, Any]) -> Any:
    return jq.compile(program, args=args) if args else jq.compile(program)


# Programs that read further inputs (input, inputs) would take the next record of a batch,
# and halt ends a whole batch: such programs run one record per call. A false match (the
# word in a string) only costs speed. Modules (import/include) must come first in a
# program, so the wrapped program does not compile and runs one record per call too.
_NOT_BATCHABLE = re.compile(r"\b(input|inputs|halt|halt_error)\b")
SUB_BATCH = 256  # records per libjq call: bounds what an error re-reads


def compile_batched(program: str, args: dict[str, Any]) -> Any | None:
    """``[PROGRAM]``, one array of outputs per record; None when it cannot be batched."""
    if _NOT_BATCHABLE.search(program):
        return None
    try:
        # On the program's first line, so $__loc__ is unchanged; after a newline, so a
        # trailing comment cannot swallow the bracket (if it does, it does not compile).
        return compile_program("[" + program + "\n]", args)
    except ValueError:
        return None


class JqTransformProvider(TransformProvider[JqConfig]):
    name = "jq-transform-provider"
    version = "0.1.0"
    Config = JqConfig
    sub_batch = SUB_BATCH

    def __init__(self, config: JqConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.program = compile_program(config.program, config.args)
        self.passthrough = config.program.strip() == "." and not config.args
        self.batched = compile_batched(config.program, config.args)

    def transform_batch(self, envelopes: list[Envelope]) -> list[Any] | None:
        """Results for many records, each exactly what :meth:`transform` gives it."""
        if self.passthrough:
            return [envelope.raw + b"\n" for envelope in envelopes]
        if self.batched is None:
            return None
        raws = [envelope.raw for envelope in envelopes]
        # Each line exactly one JSON object (valid UTF-8), so libjq reads one input per line.
        if valid_block(b"\n".join(raws) + b"\n") != len(raws):
            return None
        results: list[Any] = []
        for start in range(0, len(envelopes), self.sub_batch):
            if not self._sub_batch(envelopes, raws, start, min(start + self.sub_batch, len(envelopes)), results):
                return None
        return results

    def _sub_batch(self, envelopes: list[Envelope], raws: list[bytes], start: int, end: int, out: list[Any]) -> bool:
        """Appends the results of records start..end to ``out``; False if unsure which is which."""
        batched = self.batched
        assert batched is not None
        k = start
        append = out.append
        while k < end:
            try:
                for outputs in batched.input_text(b"\n".join(raws[k:end]).decode()):
                    if k >= end:
                        return False
                    if len(outputs) == 1 and outputs[0].__class__ is dict:
                        append(encode(outputs[0]))
                    elif all(item.__class__ is dict or item is None for item in outputs):
                        out.append(b"".join([encode(item) for item in outputs if item is not None]))
                    else:
                        out.append(self._reference(envelopes[k]))  # rejected: its exact reason
                    k += 1
            except ValueError:
                # A jq error ends the call: it came from record k, unless a record before
                # it gave no array (error(null)) and shifted the count. Record k must then
                # raise a jq error on its own too, or nothing in this batch can be trusted.
                try:
                    self._outputs(envelopes[k])
                except ValueError:
                    out.append(self._reference(envelopes[k]))
                    k += 1
                    continue
                return False
            if k != end:
                return False  # a record gave no array (error(null) inside it)
        return True

    def _reference(self, envelope: Envelope) -> Any:
        try:
            return self.transform(envelope)
        except Reject as exc:
            return exc

    def _outputs(self, envelope: Envelope) -> list[Any]:
        return self.program.input_text(envelope.raw.decode()).all()  # type: ignore[no-any-return]

    def transform(self, envelope: Envelope) -> list[Envelope]:
        if self.passthrough:
            return [envelope]
        try:
            results = self._outputs(envelope)
        except ValueError as exc:
            raise Reject(f"jq: {exc}") from None
        out = []
        for result in results:
            if result is None:
                continue
            if not isinstance(result, dict):
                raise Reject(f"the jq program produced a {type(result).__name__}, not an object: {str(result)[:80]}")
            out.append(Envelope(encode(result)[:-1]))
        return out


main = JqTransformProvider.main
