"""The all-in-one demo (``scripts/aio.sh``): deploy with Ansible, then show it working."""
