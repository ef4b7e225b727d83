"""WSGI entry point of aodh-api under gunicorn (runs in Aodh's venv).

``aodh.wsgi.api`` builds the app with ``argv=[]``, so oslo.config would read
``/etc/aodh`` only; this module passes the config file named by
``GHA_AODH_CONFIG`` instead.

Standard library and Aodh only: no guest_ha imports.
"""

import os
import sys

from aodh.api import app

sys.argv = sys.argv[:1]
application = app.build_wsgi_app(argv=["--config-file", os.environ["GHA_AODH_CONFIG"]])
