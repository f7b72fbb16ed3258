"""Web app tests: a real browser (Playwright driving Chromium), gradio_client, the notebook and the Space."""
