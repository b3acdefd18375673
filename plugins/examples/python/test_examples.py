import unittest

from sluice_plugin import SessionKind
from sluice_plugin.testing import FilterHarness

from deny_words import DenyWords
from mask_ids import MaskIds


class MaskIdsTest(unittest.TestCase):
    def test_masks_output_rows_and_error_text(self):
        shell = FilterHarness(MaskIds)
        self.assertEqual(shell.output("owner CUST-00123456\n").replaced_text(), "owner [customer]\n")
        self.assertTrue(shell.output("nothing here").is_pass())
        pg = FilterHarness(MaskIds, kind=SessionKind.PG)
        self.assertEqual(pg.row(["CUST-00123456", None]).replaced_text(), "[customer]\tNULL")


class DenyWordsTest(unittest.TestCase):
    def test_refuses_a_word_however_the_command_arrives(self):
        shell = FilterHarness(DenyWords, {"words": ["shutdown"]})
        self.assertTrue(shell.exec_script("sudo shutdown now").is_deny())
        self.assertTrue(shell.typed_line("sudo shutdown now").is_deny())
        self.assertTrue(shell.typed_line("ls").is_pass())
        pg = FilterHarness(DenyWords, {"words": ["payroll"]}, kind=SessionKind.PG)
        self.assertTrue(pg.query("SELECT * FROM payroll").is_deny())

    def test_a_bad_config_is_refused(self):
        with self.assertRaises(ValueError):
            FilterHarness(DenyWords, {"words": "shutdown"})


if __name__ == "__main__":
    unittest.main()
