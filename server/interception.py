"""The one way the coordinator wraps its RPC handlers.

Each concern around a call (metrics, tokens, request limits, storage
failures) is an ``Interceptor`` that overrides only the hooks it needs; the
wrapping of unary and streaming handlers, the closing of a stream's
generator, and turning a ``Refusal`` into its status code and reason
trailer are done here, once, for all of them.

The order of a call through one interceptor:

1. ``open``: before the request's bytes are parsed (method and metadata
   only). Raising a Refusal here answers with a handler that never parses
   the bytes.
2. ``deserializer``: how the request bytes become a message.
3. ``received``, then ``admit`` (raise a Refusal to refuse), then the inner
   handler; ``sent`` for each response message.
4. ``until`` (streams): an awaitable that, when it completes first, ends
   the stream with the Refusal it returns.
5. ``failure``: an exception of the inner handler as a Refusal, or None to
   let it propagate; ``finished`` with the final status code name, always.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from seedfed.server.errors import Refusal, abort


@dataclass(frozen=True)
class CallInfo:
    method: str  # the full method name, /package.Service/Method
    metadata: tuple[tuple[str, str | bytes], ...]
    streaming: bool  # the response is a stream


def code_name(context: grpc.aio.ServicerContext) -> str:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a context that cannot say: the call did not finish cleanly
        code = None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def refusing_handler(handler: grpc.RpcMethodHandler, refusal: Refusal) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that only refuses; it takes the request as
    raw bytes, so nothing from a refused peer is parsed."""

    async def refuse(request, context):  # noqa: ANN001
        await abort(context, refusal)

    async def refuse_stream(request, context):  # noqa: ANN001
        await abort(context, refusal)
        yield b""  # unreachable: makes this an async generator

    if handler.request_streaming:
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


class Interceptor(grpc.aio.ServerInterceptor):
    """A server interceptor made of hooks (see the module docstring); every hook is optional."""

    def covers(self, method: str) -> bool:
        """Whether this interceptor sees calls of ``method`` at all."""
        return True

    async def open(self, call: CallInfo) -> Any:  # noqa: ANN401 - whatever state the hooks below share
        return call

    def deserializer(self, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        return inner

    def received(self, state: Any, request: Any) -> None:  # noqa: ANN401
        pass

    async def admit(self, state: Any, request: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: ANN401
        pass

    def sent(self, state: Any, message: Any) -> None:  # noqa: ANN401
        pass

    def until(self, state: Any) -> Awaitable[Refusal] | None:  # noqa: ANN401
        return None

    def failure(self, state: Any, exc: Exception) -> Refusal | None:  # noqa: ANN401
        return None

    def finished(self, state: Any, code: str) -> None:  # noqa: ANN401
        pass

    # -- the wrapping, once for every kind of handler ------------------------------------------
    async def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not self.covers(method):
            return handler
        call = CallInfo(method, tuple(handler_call_details.invocation_metadata or ()), handler.response_streaming)
        try:
            state = await self.open(call)
        except Refusal as refusal:
            return refusing_handler(handler, refusal)
        deserializer = self.deserializer(handler.request_deserializer)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, state), request_deserializer=deserializer)
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, state), request_deserializer=deserializer)
        return handler  # the protocol has no client-streaming calls

    async def _refuse(self, state: Any, context: grpc.aio.ServicerContext, exc: Exception) -> None:  # noqa: ANN401
        """Abort with the refusal ``exc`` stands for; re-raise it when it stands for none."""
        refusal = exc if isinstance(exc, Refusal) else self.failure(state, exc)
        if refusal is None:
            raise exc
        await abort(context, refusal)

    def _unary(self, behavior, state: Any):  # noqa: ANN001, ANN202, ANN401
        async def call(request, context):  # noqa: ANN001, ANN202
            self.received(state, request)
            code = "OK"
            try:
                try:
                    await self.admit(state, request, context)
                    response = behavior(request, context)
                    if inspect.isawaitable(response):
                        response = await response
                except Exception as exc:  # noqa: BLE001 - a refusal, or what failure() makes of it
                    await self._refuse(state, context, exc)
                    raise
                self.sent(state, response)
                return response
            except BaseException:
                code = code_name(context)
                raise
            finally:
                self.finished(state, code)

        return call

    def _stream(self, behavior, state: Any):  # noqa: ANN001, ANN202, ANN401
        async def call(request, context):  # noqa: ANN001, ANN202
            self.received(state, request)
            code = "OK"
            events = stop = pending = None
            try:
                try:
                    await self.admit(state, request, context)
                    events = behavior(request, context)
                    if not inspect.isasyncgen(events):  # a handler that writes with context.write
                        await events
                        events = None
                        return
                    interruption = self.until(state)
                    if interruption is None:
                        async for item in events:
                            self.sent(state, item)
                            yield item
                        return
                    stop = asyncio.ensure_future(interruption)
                    while True:
                        # The next event or the interruption, whichever comes first.
                        pending = asyncio.ensure_future(events.__anext__())
                        await asyncio.wait((pending, stop), return_when=asyncio.FIRST_COMPLETED)
                        if not pending.done():
                            raise stop.result()
                        try:
                            item = pending.result()
                        except StopAsyncIteration:
                            return
                        pending = None
                        self.sent(state, item)
                        yield item
                except Exception as exc:  # noqa: BLE001 - a refusal, or what failure() makes of it
                    await self._refuse(state, context, exc)
                    raise
            except BaseException:
                code = code_name(context)
                raise
            finally:
                # Also reached when the peer cancels: nothing may outlive the call.
                for future in (pending, stop):
                    if future is not None and not future.done():
                        future.cancel()
                        await asyncio.gather(future, return_exceptions=True)
                if events is not None:
                    await events.aclose()
                self.finished(state, code)

        return call
