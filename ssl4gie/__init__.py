"""ssl4gie."""
