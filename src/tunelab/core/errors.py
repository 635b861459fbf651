"""User-facing errors: one line, no traceback, exit code 2."""


class TunelabError(Exception):
    """An error caused by the user's input (config, data, model name, paths).

    The CLI prints ``error: <message>`` on one line and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
