"""The ``diagnose`` command."""
