"""The demo world: the procedural shapes world and the demo job built on it."""
