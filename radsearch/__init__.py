"""radsearch: the command line and the demo that wire the parts together."""
