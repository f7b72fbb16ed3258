"""The face-anon Space: the package's web app (``face-anon-app``), nothing else.

Settings come from the environment: ``FACE_ANON_MODEL`` (a converted repository; unset: the authors'
published weights, listed in README.md), and Gradio's ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``.
"""

from face_anon.apps.web import main


if __name__ == "__main__":
    main()
