"""Tools around the course: the `conserviz` command, the headless course runner, the synthetic sample."""
