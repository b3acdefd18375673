"""An example gate in Python: commands that contain a forbidden word are refused, whether
they come as a one-shot script or SQL (statements) or are typed at a terminal (lines)."""

from sluice_plugin import Filter, Interest, Kind, Verdict, export_filter


class DenyWords(Filter):
    def __init__(self, config, session):
        self.words = config.get("words", [])
        if not isinstance(self.words, list) or not all(isinstance(w, str) for w in self.words):
            raise ValueError("`words` must be a list of strings")

    def interest(self):
        return Interest(client_to_target=[Kind.STATEMENT, Kind.LINE], stateless=True)

    def on_frame(self, frame):
        text = frame.content.text() or ""
        for word in self.words:
            if word in text:
                return Verdict.deny(f"`{word}` is not allowed here")
        return Verdict.pass_()


WitWorld = export_filter(DenyWords)
