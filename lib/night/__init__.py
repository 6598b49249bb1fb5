"""The night of overnight.py: a time budget spent on a better submission, resumably.

lib.night.settings: its options (``NightSettings``) and those a resumed night must repeat; lib.night.commands:
every stage's command, built with lib.pipeline.commands; lib.night.plan: the budget arithmetic (light);
lib.night.probe: the machine's rates (torch); lib.night.markers: finished-stage markers and the owner of a shared
night; lib.night.run: the plan made or resumed, the stages and studies run (``run_night``, overnight.py's body);
lib.night.summary: summary.md. Nothing is imported here.
"""
