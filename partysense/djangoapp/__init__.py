"""partysense-live for a Django project: tokens, the live board, the SQL install.

    pip install 'partysense-live[django]'

    # settings.py
    INSTALLED_APPS = [..., "partysense.djangoapp"]
    PARTYSENSE_LIVE = {"URL": "https://live.partysense.example",
                       "TOKEN_SECRET_FILE": "/etc/partysense-live/token.secret"}

    # urls.py
    path("live/", include("partysense.djangoapp.urls")),

    {# a template #}
    {% load partysense_live %}{% live_board event.id %}

``manage.py migrate`` installs the change log, functions and triggers
(migration ``partysense_live 0001``); ``manage.py partysense_install`` runs
the same SQL again. docs/client.md has the whole path. The daemon never
imports this package, and this package uses only the daemon's lowest layers
(``partysense.dialects.tokens``, ``partysense.db.sqlfiles``): setup.cfg's contracts.
"""
