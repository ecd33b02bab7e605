"""Training: the config, the dataset, templates, the schedule, the loop and its resume state."""
