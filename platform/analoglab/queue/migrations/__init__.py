"""Alembic migration scripts of the queue's database (run through :mod:`..migrate`)."""
