"""`{{name}}`: a Sluice filter plugin. It refuses commands that contain a forbidden word and
masks a pattern in what targets send back. Change both to what you need."""

import re

from sluice_plugin import Content, Filter, Interest, Kind, Verdict, export_filter


class Plugin(Filter):
    # Once per session: read the config (the plugin's table in the policy) and compile
    # patterns here, not per frame. A ValueError refuses the config.
    def __init__(self, config, session):
        unknown = set(config) - {"forbidden", "mask", "replacement"}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")  # a typo is an error
        self.forbidden = config.get("forbidden", [])
        try:
            self.mask = re.compile(config["mask"].encode())
        except KeyError:
            raise ValueError("`mask` (a pattern) is required")
        except re.error as error:
            raise ValueError(f"invalid pattern `{config['mask']}`: {error}")
        self.replacement = config.get("replacement", "[masked]").encode()

    # The frames to judge (docs/plugins.md, "What each session sends"). Commands: a one-shot
    # script or a SQL query is a statement; a line typed at a terminal is a line (at Enter).
    # Output: a program prints bytes; PostgreSQL sends rows, and errors as lines.
    # Each verdict depends on its frame alone, so the plugin is stateless: set it to False
    # once it keeps anything between frames (buffered bytes, counters).
    def interest(self):
        return Interest(client_to_target=[Kind.STATEMENT, Kind.LINE],
                        target_to_client=[Kind.BYTES, Kind.ROW, Kind.LINE],
                        stateless=True)

    def on_frame(self, frame):
        c = frame.content
        if frame.direction.value == "client-to-target":
            text = c.text() or ""
            for word in self.forbidden:
                if word in text:
                    return Verdict.deny(f"`{word}` is not allowed here")
            return Verdict.pass_()
        if c.kind is Kind.BYTES and self.mask.search(c.value):
            return Verdict.replace(Content.bytes(self.mask.sub(self.replacement, c.value)))
        if c.kind is Kind.LINE and self.mask.search(c.value.encode()):
            masked = self.mask.sub(self.replacement, c.value.encode())
            return Verdict.replace(Content.line(masked.decode("utf-8", "replace")))
        if c.kind is Kind.ROW and any(x is not None and self.mask.search(x) for x in c.value):
            return Verdict.replace(Content.row(
                [None if x is None else self.mask.sub(self.replacement, x) for x in c.value]))
        return Verdict.pass_()


WitWorld = export_filter(Plugin)
