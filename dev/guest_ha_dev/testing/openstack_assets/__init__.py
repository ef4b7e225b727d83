"""Files that ``guest_ha_dev.testing.openstack`` hands to the OpenStack services.

The modules in this folder run *inside the services' own virtualenvs*, not in
the project's environment, so they import only the standard library and the
service itself:

- ``gha_wsgi_shim``: the gunicorn entry point (cuts ``sys.argv`` before the
  service's WSGI app is imported);
- ``nova_seed``: creates Nova's own database objects (flavors, hosts,
  servers, server groups) for tests, because a nova-api alone cannot boot a
  server.
"""

import os

ASSETS_DIR = os.path.dirname(os.path.abspath(__file__))
