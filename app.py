"""WSGI entry point: `flask run`, `gunicorn app:app`."""

from soma import create_app

app = create_app()
