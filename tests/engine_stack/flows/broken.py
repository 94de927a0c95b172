"""A flow file that cannot be imported: its entrypoint ends the run Failed."""

import a_module_that_does_not_exist  # noqa: F401
