"""WSGI shim that gunicorn loads inside an OpenStack service's own venv.

OpenStack services parse their configuration with oslo.config, which reads
``sys.argv`` when the WSGI application is imported.  Under gunicorn that argv
is gunicorn's own command line, and oslo.config dies on it.  This module cuts
``sys.argv`` down to the program name *before* importing the real application,
then re-exports it as ``application``.

The real application is named by the environment variable
``GHA_WSGI_TARGET`` as ``package.module:attribute``, for example
``keystone.wsgi.api:application`` or ``nova.wsgi.osapi_compute:application``.

This file runs inside the service venv: standard library only, no guest_ha
imports.
"""

import importlib
import os
import sys

sys.argv = sys.argv[:1]

_target = os.environ["GHA_WSGI_TARGET"]
_module_name, _, _attr = _target.partition(":")
application = getattr(importlib.import_module(_module_name), _attr or "application")
