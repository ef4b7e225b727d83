"""WSGI entry point of vitrage-api under gunicorn (runs in Vitrage's venv).

Vitrage ships ``vitrage/api/app.wsgi`` for mod_wsgi, which parses no config
file argument and so reads ``/etc/vitrage``.  This module does what that
file does with the config file named by ``GHA_VITRAGE_CONFIG``: parse the
configuration (which also registers every datasource's options), then load
the paste app named after ``[api] auth_mode``.

Standard library and Vitrage only: no guest_ha imports.
"""

import os
import sys

from vitrage.api import app
from vitrage.common import config

sys.argv = sys.argv[:1]
config.parse_config(["vitrage-api", "--config-file", os.environ["GHA_VITRAGE_CONFIG"]])
application = app.load_app()
