"""The Feast feature repository: definitions only (Feast imports every other .py file here)."""
