"""Write Sluice filter plugins in Python.

The same contract as the Rust SDK (`wit/plugin.wit`), in plain Python types: a plugin is a
subclass of `Filter`, exported with `export_filter`, built into a component with
componentize-py, and tested natively with `sluice_plugin.testing.FilterHarness`:

    from sluice_plugin import Filter, Verdict, Kind, Interest, export_filter

    class NoDrop(Filter):
        def __init__(self, config, session):
            self.word = config.get("word", "DROP")

        def interest(self):
            return Interest(client_to_target=[Kind.STATEMENT, Kind.LINE])

        def on_frame(self, frame):
            if self.word in (frame.content.text() or ""):
                return Verdict.deny(f"{self.word} is not allowed")
            return Verdict.pass_()

    WitWorld = export_filter(NoDrop)

One instance serves one session: attributes of the filter are per-session state.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

__all__ = [
    "Direction", "Kind", "CellFormat", "Column", "Statement", "FileChunk", "ToolCall",
    "ToolResult", "HttpRequest", "HttpResponse", "Content", "Frame", "Interest", "Verdict",
    "Identity", "SessionInfo", "SessionKind", "Filter", "export_filter", "log", "Prescreen",
    "literal",
]


class Direction(enum.Enum):
    CLIENT_TO_TARGET = "client-to-target"
    TARGET_TO_CLIENT = "target-to-client"


class Kind(enum.Enum):
    """The kinds of content a frame can carry."""
    BYTES = "bytes"
    LINE = "line"
    STATEMENT = "statement"
    COLUMNS = "columns"
    ROW = "row"
    FILE = "file"
    TOOL_CALL = "tool-call"
    TOOL_RESULT = "tool-result"
    HTTP_REQUEST = "http-request"
    HTTP_RESPONSE = "http-response"


class CellFormat(enum.Enum):
    TEXT = "text"
    BINARY = "binary"


@dataclass
class Column:
    name: str
    table: Optional[str] = None
    table_oid: int = 0
    type_oid: int = 0
    format: CellFormat = CellFormat.TEXT


@dataclass
class Statement:
    text: str
    params: List[Optional[bytes]] = field(default_factory=list)


@dataclass
class FileChunk:
    path: str
    offset: int
    data: bytes
    size: Optional[int] = None
    digest: Optional[bytes] = None


@dataclass
class ToolCall:
    server: str
    tool: str
    id: str
    arguments: str


@dataclass
class ToolResult:
    server: str
    tool: str
    id: str
    output: str
    is_error: bool = False


@dataclass
class HttpRequest:
    method: str
    uri: str
    headers: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class HttpResponse:
    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class Content:
    """A frame's content: `kind` says which field holds it.

    bytes: `data`; line: `text`; statement: `statement`; columns: `columns`; row: `cells`
    (None for NULL); file: `file`; tool-call: `tool_call`; tool-result: `tool_result`;
    http-request / http-response: `http`.
    """
    kind: Kind
    value: object

    @staticmethod
    def bytes(data: bytes) -> "Content":
        return Content(Kind.BYTES, bytes(data))

    @staticmethod
    def line(text: str) -> "Content":
        return Content(Kind.LINE, text)

    @staticmethod
    def statement(text: str, params: Optional[List[Optional[bytes]]] = None) -> "Content":
        return Content(Kind.STATEMENT, Statement(text, list(params or [])))

    @staticmethod
    def columns(columns: List[Column]) -> "Content":
        return Content(Kind.COLUMNS, list(columns))

    @staticmethod
    def row(cells: List[Optional[bytes]]) -> "Content":
        return Content(Kind.ROW, list(cells))

    def text(self) -> Optional[str]:
        """The content as text where it is text: bytes and file data (lossily), a line, a
        statement's text, a row's cells joined by tabs (NULL for None), a tool call's
        arguments or a tool result's output."""
        v = self.value
        if self.kind is Kind.BYTES:
            return v.decode("utf-8", "replace")
        if self.kind is Kind.LINE:
            return v
        if self.kind is Kind.STATEMENT:
            return v.text
        if self.kind is Kind.ROW:
            return "\t".join("NULL" if c is None else c.decode("utf-8", "replace") for c in v)
        if self.kind is Kind.COLUMNS:
            return "\t".join(c.name for c in v)
        if self.kind is Kind.FILE:
            return v.data.decode("utf-8", "replace")
        if self.kind is Kind.TOOL_CALL:
            return v.arguments
        if self.kind is Kind.TOOL_RESULT:
            return v.output
        return None


@dataclass
class Frame:
    seq: int
    direction: Direction
    timestamp_ms: int
    content: Content


@dataclass
class Prescreen:
    """Frames of `kinds` reach the plugin only when one of `patterns` (Rust regex syntax,
    ASCII classes; `literal(text)` escapes a word) matches one of their texts. The gateway
    runs the test natively, so frames the plugin cannot act on cost no call: name only what
    every frame the plugin acts on contains."""
    kinds: List[Kind]
    patterns: List[str]


def literal(text: str) -> str:
    """`text` as a prescreen pattern that matches it literally."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$#&-~" else c for c in text)


@dataclass
class Interest:
    """The frames a filter wants; the gateway passes the others on without a call.

    `stateless=True` says each verdict depends on its frame (and the config) alone: the
    gateway may then replace the instance with a fresh one between calls, which it does
    before memory the interpreter keeps per call reaches the plugin's limit. Leave it False
    for a plugin that keeps anything between frames (buffered bytes, counters)."""
    client_to_target: List[Kind] = field(default_factory=list)
    target_to_client: List[Kind] = field(default_factory=list)
    stateless: bool = False
    prescreen: Optional[Prescreen] = None

    @staticmethod
    def all() -> "Interest":
        return Interest(list(Kind), list(Kind))

    def wants(self, direction: Direction, kind: Kind) -> bool:
        kinds = (self.client_to_target if direction is Direction.CLIENT_TO_TARGET
                 else self.target_to_client)
        return kind in kinds


@dataclass
class Verdict:
    """What happens to a frame: `action` is pass, replace, hold or deny."""
    action: str
    content: Optional[Content] = None
    reason: Optional[str] = None
    record_as: Optional[Content] = None

    @staticmethod
    def pass_() -> "Verdict":
        return Verdict("pass")

    @staticmethod
    def replace(content: Content) -> "Verdict":
        return Verdict("replace", content=content)

    @staticmethod
    def hold(reason: str) -> "Verdict":
        return Verdict("hold", reason=reason)

    @staticmethod
    def deny(reason: str) -> "Verdict":
        return Verdict("deny", reason=reason)

    def recorded(self, content: Content) -> "Verdict":
        """The record and the sinks get `content` instead of what is forwarded."""
        self.record_as = content
        return self

    def is_pass(self) -> bool:
        return self.action == "pass"

    def is_deny(self) -> bool:
        return self.action == "deny"

    def is_hold(self) -> bool:
        return self.action == "hold"

    def replaced_text(self) -> Optional[str]:
        return self.content.text() if self.action == "replace" and self.content else None

    def recorded_text(self) -> Optional[str]:
        return self.record_as.text() if self.record_as else None


@dataclass
class Identity:
    subject: str = ""
    name: Optional[str] = None
    groups: List[str] = field(default_factory=list)


@dataclass
class SessionInfo:
    id: str = ""
    connection: str = ""
    protocol: str = ""
    identity: Identity = field(default_factory=Identity)
    started_at_ms: int = 0


class SessionKind(enum.Enum):
    """What each kind of session sends (docs/plugins.md, "What each session sends")."""
    EXEC_SCRIPT = "exec-script"
    TERMINAL = "terminal"
    PG = "pg"
    TCP = "tcp"

    @property
    def protocol(self) -> str:
        return {"exec-script": "exec", "terminal": "exec", "pg": "postgres", "tcp": "tcp"}[self.value]

    def input_frames(self, text: str) -> List[Content]:
        """The client-to-target frames the gateway makes of `text`, in order."""
        if self in (SessionKind.EXEC_SCRIPT, SessionKind.PG):
            return [Content.statement(text)]
        if self is SessionKind.TCP:
            return [Content.bytes(text.encode())]
        frames = []
        for line in text.splitlines(keepends=True):
            typed = line.rstrip("\r\n")
            if typed:
                frames.append(Content.bytes(typed.encode()))
            if len(typed) < len(line) and typed.strip():
                frames.append(Content.line(typed))
        return frames


class Filter:
    """A plugin that sees every frame of one session. Subclass it:

    - `__init__(self, config, session)`: once per session; `config` is the plugin's policy
      table (a dict). Raise ValueError to refuse the config or the session.
    - `interest(self)`: the frames to see (default: all).
    - `on_frame(self, frame)`: a Verdict for each frame.
    - `flush(self, direction)`: what the plugin still buffers, or None.
    """

    def __init__(self, config: dict, session: SessionInfo):
        pass

    def interest(self) -> Interest:
        return Interest.all()

    def on_frame(self, frame: Frame) -> Verdict:
        return Verdict.pass_()

    def flush(self, direction: Direction) -> Optional[Content]:
        return None


def log(level: str, message: str, **fields: str) -> None:
    """Into the gateway's log, tagged with the plugin and the session (natively: stderr)."""
    from . import _component
    _component.log(level, message, fields)


def export_filter(cls):
    """The component's exports for `cls` (assign the result to `WitWorld` in the module
    componentize-py builds)."""
    from . import _component
    return _component.filter_world(cls)


def parse_config(text: str) -> dict:
    return json.loads(text) if text.strip() else {}
