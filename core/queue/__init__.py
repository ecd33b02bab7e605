"""The run queue: job files in `runs/queue/`, a detached scheduler that runs them one worker per GPU (or N on CPU),
and Ray beyond one machine. See `core.queue.jobs` for the folder layout."""
