"""cgctl agent against this host's own kernel (cgroup v1 / hybrid here)."""

from __future__ import annotations

import pytest

from tests.agent_cases import *  # noqa: F403 - the shared cases run here with this module's marker

pytestmark = [pytest.mark.host]
