"""Storage: the repository interface, the PostgreSQL repository and the in-memory one.

Importing this package does not import psycopg: ``fusillade.store.memory`` works
without it, and ``fusillade.store.postgres`` is imported only by those who use it.
"""
