"""An example masker in Python: customer ids (`CUST-` and eight digits) in what targets send
become `[customer]`, in program output, PostgreSQL rows and error text alike."""

import re

from sluice_plugin import Content, Filter, Interest, Kind, Verdict, export_filter

IDS = re.compile(rb"CUST-[0-9]{8}")


class MaskIds(Filter):
    def __init__(self, config, session):
        self.replacement = config.get("replacement", "[customer]").encode()

    def interest(self):
        return Interest(target_to_client=[Kind.BYTES, Kind.ROW, Kind.LINE], stateless=True)

    def on_frame(self, frame):
        c = frame.content
        if c.kind is Kind.BYTES and IDS.search(c.value):
            return Verdict.replace(Content.bytes(IDS.sub(self.replacement, c.value)))
        if c.kind is Kind.LINE and IDS.search(c.value.encode()):
            return Verdict.replace(Content.line(IDS.sub(self.replacement, c.value.encode()).decode()))
        if c.kind is Kind.ROW and any(x is not None and IDS.search(x) for x in c.value):
            return Verdict.replace(Content.row(
                [None if x is None else IDS.sub(self.replacement, x) for x in c.value]))
        return Verdict.pass_()


WitWorld = export_filter(MaskIds)
