"""Under ``make mutation`` (mutmut sets MUTANT_UNDER_TEST), hypothesis runs the same fixed
examples every time (a reproducible report) and stops at the first failing one: a killed
mutant needs a failure, not a minimal one, and shrinking took most of the run's time. No
deadline or health check either: a slow mutant must not count as killed by a timing rule."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

if "MUTANT_UNDER_TEST" in os.environ:
    settings.register_profile(
        "mutation",
        phases=[Phase.explicit, Phase.generate],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    settings.load_profile("mutation")
