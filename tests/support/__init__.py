"""What the test modules share: helpers and harnesses, never tests.

Test modules import from here (and take fixtures from conftest.py), never from each other;
tests/unit/test_suite_layout.py enforces that.
"""
