"""The demo: the talk's user directory, live in every open tab, no polling.

Run it with ``python -m example_app`` (see ``--help``).
"""
