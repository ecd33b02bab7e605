"""The run folder (the API between the worker and every front end), the run API and the worker."""
