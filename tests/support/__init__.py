"""Helpers shared by test modules in several folders (tests/ is on sys.path: `from support.compile import ...`).

A test module imports helpers from here, never from another test module; conftest.py keeps the fixtures.
"""
