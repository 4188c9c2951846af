"""cgctl agent on a pure cgroup v2 kernel (runs in the VM)."""

from __future__ import annotations

import pytest

from tests.agent_cases import *  # noqa: F403 - the shared cases run here with this module's marker

pytestmark = [pytest.mark.cgroupv2]
