"""Where we reach into third-party libraries: one module per library.

Every private name of Twisted or Autobahn that the daemon uses lives in
exactly one of these modules (txpostgres's, which wrap psycopg2, in
partysense/db/txpostgres_adapter.py, the one room that speaks the driver),
and tests/test_adapters_<library>.py
has a canary for each that names the library, the name and the version when
an upgrade removes it or changes its shape. docs/architecture.md says why each
one is needed.
"""
