"""Errors a stage reports as one line each and exits with status 2 for."""


class UsageError(Exception):
    """A bad option, model name or work directory state."""


class InputError(Exception):
    """Bad rows in an input file; ``problems`` holds one line per problem (file, row, what is wrong)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
