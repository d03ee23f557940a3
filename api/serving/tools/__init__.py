"""Tool calling on the model's own syntax: what is forced, and how calls are read back."""
