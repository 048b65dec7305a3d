"""Running a task and the services around a run.

The data path: attempt.py (one attempt of N stages), flow.py, persister.py, runner.py
(restarts and leases), launch.py (starting the stages). Around it: progress.py (what a run is
doing now), statusline.py and metrics.py (showing it), runs.py, detach.py, logwriter.py and
logs.py (runs on this machine, in the background, and their logs), lifecycle.py and
checkpoints.py (the lifecycle verbs and what they say of the checkpoint).
"""
