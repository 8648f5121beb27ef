#!/usr/bin/env python
"""Django's command-line entry point for the example project.

    export EMBEDBALANCE_BACKENDS=http://127.0.0.1:8001,http://127.0.0.1:8002
    python examples/django_app/manage.py runserver 127.0.0.1:8000

Running this file puts its own folder on ``sys.path``, which is how ``embedsite`` is
found from any working directory.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
