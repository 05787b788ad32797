"""Teaching: the exercises' self-checks, the widgets, and the solved notebooks built from one source."""
