"""The search service: a long-lived model and table behind an HTTP API and a web page.

``service`` holds the logic (plain Python, testable alone), ``media`` the byte ranges and
thumbnails, ``app`` the FastAPI routes in a Ray Serve deployment, ``deployment`` starting and
stopping it, and ``static/`` the page (HTML, CSS, JavaScript; no build step, nothing fetched
from elsewhere).
"""
