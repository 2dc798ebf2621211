"""An example outerloop filter package."""
