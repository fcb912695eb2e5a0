"""Which Luigi scheduler a ``luigi --module tasks ...`` command uses.

luigi.cfg selects the local scheduler, so a single command needs no ``luigid``. Luigi gives a config
value precedence over its own default but never lets ``--scheduler-host`` override ``local_scheduler``,
so on their own the scheduler flags would be silently ignored. Luigi imports ``--module tasks`` while it
parses the command line and reads ``[core] local_scheduler`` only afterwards, when it creates the
scheduler (``luigi.interface._schedule_and_run``); tasks.py calls ``use_requested_scheduler`` at import,
which turns the local scheduler off when the command asks for a central one:

- ``--scheduler-url``, ``--scheduler-host`` or ``--scheduler-port`` on the command line (Luigi then
  builds the address from them as usual), or
- ``PRVR_SCHEDULER_URL=http://host:8082/`` in the environment, for batch jobs whose command line is
  fixed; the command line's flags take precedence over it.

``--local-scheduler`` given explicitly keeps the local scheduler, even with PRVR_SCHEDULER_URL set;
together with a scheduler flag it is a contradiction and stops the command. Luigi's own way keeps
working too: a file named by ``LUIGI_CONFIG_PATH`` is read after luigi.cfg, so its
``[core] local_scheduler = false`` takes effect.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Sequence

import luigi.configuration

SCHEDULER_URL_ENV = "PRVR_SCHEDULER_URL"
_SCHEDULER_FLAGS = ("--scheduler-url", "--scheduler-host", "--scheduler-port")


def _scheduler_flags_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: only Luigi's full flag names count (``--flag value`` or ``--flag=value``);
    # every other argument is left to Luigi.
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--local-scheduler", action="store_true")
    for flag in _SCHEDULER_FLAGS:
        parser.add_argument(flag)
    return parser


def scheduler_settings(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The ``[core]`` settings that make Luigi use the scheduler this command asks for; ``{}`` leaves
    luigi.cfg's local scheduler. ``argv`` is the command line after the program name."""
    args, _ = _scheduler_flags_parser().parse_known_args(list(argv))
    named = [flag for flag in _SCHEDULER_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    if args.local_scheduler and named:
        raise SystemExit(f"--local-scheduler contradicts {' '.join(named)}: give one or the other")
    if args.local_scheduler:
        return {}
    if named:
        return {"local_scheduler": "false"}
    url = environ.get(SCHEDULER_URL_ENV, "")
    return {"local_scheduler": "false", "scheduler_url": url} if url else {}


def use_requested_scheduler() -> None:
    """Applies ``scheduler_settings`` of this process's command line and environment to Luigi's config."""
    config = luigi.configuration.get_config()
    if not config.has_section("core"):  # run from outside the repository: no luigi.cfg was read
        config.add_section("core")
    for key, value in scheduler_settings(sys.argv[1:], os.environ).items():
        config.set("core", key, value)
