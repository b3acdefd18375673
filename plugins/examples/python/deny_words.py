"""An example gate in Python: commands that contain a forbidden word are refused, whether
they come as a one-shot script or SQL (statements) or are typed at a terminal (lines)."""

from sluice_plugin import Filter, Interest, Kind, Prescreen, Verdict, export_filter, literal


class DenyWords(Filter):
    def __init__(self, config, session):
        self.words = config.get("words", [])
        if not isinstance(self.words, list) or not all(isinstance(w, str) for w in self.words):
            raise ValueError("`words` must be a list of strings")

    def interest(self):
        # A command without one of the words passes uncalled: the gateway looks for them.
        kinds = [Kind.STATEMENT, Kind.LINE]
        return Interest(client_to_target=kinds, stateless=True,
                        prescreen=Prescreen(kinds, [literal(w) for w in self.words]))

    def on_frame(self, frame):
        text = frame.content.text() or ""
        for word in self.words:
            if word in text:
                return Verdict.deny(f"`{word}` is not allowed here")
        return Verdict.pass_()


WitWorld = export_filter(DenyWords)
