"""The partner file format: parsing, validation, the stored row encoding."""
