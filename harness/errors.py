"""The two kinds of failure the CLI distinguishes, mapped to exit codes.

`BadInput` (exit 2) is anything the user can fix by changing what they passed: flags, config
fields, dataset rows, judge replies that make no sense, leaderboard files. `RunFailure` (exit 1)
is something that went wrong while running. Both carry one line meant for a human.
"""


class D2OBenchError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        # Errors are printed as one line: a multi-line message would break that contract.
        super().__init__(" ".join(str(message).split()))


class BadInput(D2OBenchError):
    exit_code = 2


class RunFailure(D2OBenchError):
    exit_code = 1
