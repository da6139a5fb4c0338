"""Runs natively: `python3 -m unittest`."""

import struct
import unittest

import model


class AffineTest(unittest.TestCase):
    def test_y_is_a_x_plus_b(self):
        a, b = model.parse_config(b"2,1\n")
        y = model.affine(a, b, struct.pack("<3f", 1, 2, 3))
        self.assertEqual(struct.unpack("<3f", y), (3.0, 5.0, 7.0))

    def test_a_config_without_a_comma_is_refused(self):
        with self.assertRaisesRegex(ValueError, "config must be `a,b`"):
            model.parse_config(b"2")


if __name__ == "__main__":
    unittest.main()
