"""The client's tests run ``main()`` in-process, which configures the root logger as a program
does: every test here gets the root logger back as it was (``root_logger_kept``, tests/conftest.py)."""

import pytest

pytestmark = pytest.mark.usefixtures("root_logger_kept")
