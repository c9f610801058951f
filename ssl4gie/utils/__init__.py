"""Small helpers shared by the package: atomic file writes, seeding."""
