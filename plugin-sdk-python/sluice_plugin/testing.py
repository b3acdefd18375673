"""Drive a Filter the way the gateway does, natively (no Wasm): frames numbered per
direction, frames outside the plugin's interest passed without a call. A prescreen is not
applied: the plugin must be right on every frame of its interest by itself (`sluice plugin
run` applies it as the gateway does)."""

from __future__ import annotations

import json
from typing import List, Optional, Union

from . import Content, Direction, Frame, Kind, SessionInfo, SessionKind, Verdict


class FilterHarness:
    def __init__(self, cls, config: Union[dict, str, None] = None,
                 kind: SessionKind = SessionKind.EXEC_SCRIPT):
        if isinstance(config, str):
            config = json.loads(config) if config.strip() else {}
        session = SessionInfo(id="test-session", connection="test", protocol=kind.protocol)
        self.kind = kind
        self.plugin = cls(config or {}, session)
        self.interest = self.plugin.interest()
        self._seq = {Direction.CLIENT_TO_TARGET: 1, Direction.TARGET_TO_CLIENT: 1}

    def send(self, direction: Direction, content: Content) -> Verdict:
        seq = self._seq[direction]
        self._seq[direction] = seq + 1
        if not self.interest.wants(direction, content.kind):
            return Verdict.pass_()
        return self.plugin.on_frame(Frame(seq, direction, 0, content))

    def input_as(self, kind: SessionKind, text: str) -> Verdict:
        """The frames a session of `kind` sends for `text`; the first deny or hold decides,
        else the last frame's verdict."""
        last = Verdict.pass_()
        for content in kind.input_frames(text):
            verdict = self.send(Direction.CLIENT_TO_TARGET, content)
            if verdict.is_deny() or verdict.is_hold():
                return verdict
            last = verdict
        return last

    def exec_script(self, script: str) -> Verdict:
        return self.input_as(SessionKind.EXEC_SCRIPT, script)

    def typed_line(self, line: str) -> Verdict:
        return self.input_as(SessionKind.TERMINAL, line + "\n")

    def query(self, sql: str) -> Verdict:
        return self.input_as(SessionKind.PG, sql)

    def output(self, text: str) -> Verdict:
        return self.send(Direction.TARGET_TO_CLIENT, Content.bytes(text.encode()))

    def row(self, cells: List[Optional[str]]) -> Verdict:
        return self.send(Direction.TARGET_TO_CLIENT,
                         Content.row([None if c is None else c.encode() for c in cells]))

    def flush(self, direction: Direction) -> Optional[Content]:
        return self.plugin.flush(direction)
