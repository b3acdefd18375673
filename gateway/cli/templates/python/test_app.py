import unittest

from sluice_plugin import SessionKind
from sluice_plugin.testing import FilterHarness

from app import Plugin

CONFIG = {"forbidden": ["shutdown"], "mask": "CUST-[0-9]{8}"}


class PluginTest(unittest.TestCase):
    def test_refuses_forbidden_words_however_the_command_arrives(self):
        shell = FilterHarness(Plugin, CONFIG)
        self.assertTrue(shell.exec_script("sudo shutdown now").is_deny())
        self.assertTrue(shell.typed_line("sudo shutdown now").is_deny())
        self.assertTrue(shell.typed_line("ls").is_pass())
        pg = FilterHarness(Plugin, CONFIG, kind=SessionKind.PG)
        self.assertTrue(pg.query("SELECT shutdown()").is_deny())

    def test_masks_output_and_rows(self):
        shell = FilterHarness(Plugin, CONFIG)
        self.assertEqual(shell.output("owner CUST-00123456\n").replaced_text(), "owner [masked]\n")
        pg = FilterHarness(Plugin, CONFIG, kind=SessionKind.PG)
        self.assertEqual(pg.row(["CUST-00123456", None]).replaced_text(), "[masked]\tNULL")
        self.assertTrue(pg.row(["nothing here"]).is_pass())

    def test_a_bad_pattern_is_refused(self):
        with self.assertRaises(ValueError):
            FilterHarness(Plugin, {"mask": "CUST-("})


if __name__ == "__main__":
    unittest.main()
