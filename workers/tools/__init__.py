"""Tools: the model's calls served on the bus (date and time, calculator, unit converter)."""
