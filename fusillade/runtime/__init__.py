"""The daemon: claim loop, per-model limiters, dispatcher, result writer, heartbeat.

Written against anyio (runs on trio, the default, and under asyncio); calls the
repository from worker threads and never imports psycopg.
"""
