"""Hypothesis settings shared by the fuzz and property suites.

A fixed seed by default (``derandomize``): CI and every local run explore the same cases,
so a failure reproduces. ``EHI_FUZZ_EXPLORE=1`` draws fresh cases to look for new ones.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings

EXPLORE = os.environ.get("EHI_FUZZ_EXPLORE") == "1"


def fuzz_settings(max_examples: int) -> Any:
    return hypothesis_settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=not EXPLORE,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
