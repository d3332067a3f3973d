"""The dataset model: jobs, versions and the pointer, and their lifecycle."""
