"""A minimal Django project that embeds texts through embedbalance (no database)."""
