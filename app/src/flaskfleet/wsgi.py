"""WSGI entry point for Gunicorn: flaskfleet.wsgi:app."""

from flaskfleet import create_app

app = create_app()
