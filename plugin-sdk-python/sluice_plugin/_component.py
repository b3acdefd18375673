"""Glue between the bindings componentize-py generates (`wit_world`) and the SDK's plain
types. The bindings exist only inside the component, so they are imported at call time:
natively (tests) this module's classes are never called."""

from __future__ import annotations

import sys

from . import (CellFormat, Column, Content, Direction, FileChunk, Frame, HttpRequest,
               HttpResponse, Identity, Interest, Kind, SessionInfo, Statement, ToolCall,
               ToolResult, Verdict, parse_config)

# Content kinds by their case names in the bindings (`Content_ToolCall` for tool-call).
_CASES = {
    Kind.BYTES: "Bytes", Kind.LINE: "Line", Kind.STATEMENT: "Statement",
    Kind.COLUMNS: "Columns", Kind.ROW: "Row", Kind.FILE: "File", Kind.TOOL_CALL: "ToolCall",
    Kind.TOOL_RESULT: "ToolResult", Kind.HTTP_REQUEST: "HttpRequest",
    Kind.HTTP_RESPONSE: "HttpResponse",
}
_KINDS = {case: kind for kind, case in _CASES.items()}


def _types():
    from wit_world.imports import types
    return types


def log(level: str, message: str, fields: dict) -> None:
    try:
        from wit_world.imports import log as host
    except ImportError:  # natively
        print(f"[{level}] {message} {fields}", file=sys.stderr)
        return
    host.log(host.Level[level.upper()], message, [(k, str(v)) for k, v in fields.items()])


def _content_in(c) -> Content:
    kind = _KINDS[type(c).__name__.removeprefix("Content_")]
    v = c.value
    if kind is Kind.STATEMENT:
        v = Statement(v.text, list(v.params))
    elif kind is Kind.COLUMNS:
        v = [Column(x.name, x.table, x.table_oid, x.type_oid, CellFormat[x.format.name])
             for x in v]
    elif kind is Kind.ROW:
        v = list(v)
    elif kind is Kind.FILE:
        v = FileChunk(v.path, v.offset, bytes(v.data), v.size, v.digest)
    elif kind is Kind.TOOL_CALL:
        v = ToolCall(v.server, v.tool, v.id, v.arguments)
    elif kind is Kind.TOOL_RESULT:
        v = ToolResult(v.server, v.tool, v.id, v.output, v.is_error)
    elif kind is Kind.HTTP_REQUEST:
        v = HttpRequest(v.method, v.uri, list(v.headers))
    elif kind is Kind.HTTP_RESPONSE:
        v = HttpResponse(v.status, list(v.headers))
    return Content(kind, v)


def _content_out(c: Content):
    t = _types()
    v = c.value
    if c.kind is Kind.STATEMENT:
        v = t.Statement(v.text, list(v.params))
    elif c.kind is Kind.COLUMNS:
        v = [t.Column(x.name, x.table, x.table_oid, x.type_oid, t.CellFormat[x.format.name])
             for x in v]
    elif c.kind is Kind.FILE:
        v = t.FileChunk(v.path, v.offset, v.data, v.size, v.digest)
    elif c.kind is Kind.TOOL_CALL:
        v = t.ToolCall(v.server, v.tool, v.id, v.arguments)
    elif c.kind is Kind.TOOL_RESULT:
        v = t.ToolResult(v.server, v.tool, v.id, v.output, v.is_error)
    elif c.kind is Kind.HTTP_REQUEST:
        v = t.HttpRequest(v.method, v.uri, list(v.headers))
    elif c.kind is Kind.HTTP_RESPONSE:
        v = t.HttpResponse(v.status, list(v.headers))
    return getattr(t, "Content_" + _CASES[c.kind])(v)


def _verdict_out(v: Verdict):
    t = _types()
    if v.action == "replace":
        action = t.Action_Replace(_content_out(v.content))
    elif v.action == "hold":
        action = t.Action_Hold(v.reason or "")
    elif v.action == "deny":
        action = t.Action_Deny(v.reason or "")
    else:
        action = t.Action_Pass()
    record_as = _content_out(v.record_as) if v.record_as is not None else None
    return t.Verdict(action, record_as)


def _failed(during: str, error: BaseException) -> None:
    # Named to the gateway as the plugin's failure (as the Rust SDK's panic hook does), then
    # the call traps: the frame fails closed.
    log("error", f"panicked: {during}: {type(error).__name__}: {error}", {"panic": "true"})


def filter_world(cls):
    class WitWorld:
        plugin = None

        def init(self, config, session):
            from componentize_py_types import Err
            info = SessionInfo(session.id, session.connection, session.protocol,
                               Identity(session.identity.subject, session.identity.name,
                                        list(session.identity.groups)),
                               session.started_at_ms)
            try:
                WitWorld.plugin = cls(parse_config(config), info)
                interest = WitWorld.plugin.interest()
            except ValueError as refused:
                raise Err(str(refused))
            except Exception as error:
                raise Err(f"{type(error).__name__}: {error}")
            t = _types()
            kinds = lambda ks: [t.ContentKind[k.name] for k in ks]
            p = interest.prescreen
            prescreen = t.Prescreen(kinds(p.kinds), [str(x) for x in p.patterns]) if p else None
            return t.Interest(kinds(interest.client_to_target), kinds(interest.target_to_client),
                              bool(interest.stateless), prescreen)

        def on_frame(self, frame):
            try:
                direction = Direction[frame.direction.name]  # the same case names
                mine = Frame(frame.seq, direction, frame.timestamp_ms, _content_in(frame.content))
                return _verdict_out(WitWorld.plugin.on_frame(mine))
            except BaseException as error:
                _failed("on_frame", error)
                raise

        def flush(self, direction):
            try:
                direction = Direction[direction.name]
                held = WitWorld.plugin.flush(direction)
                return _content_out(held) if held is not None else None
            except BaseException as error:
                _failed("flush", error)
                raise

    return WitWorld
