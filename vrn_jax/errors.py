"""The errors every stage raises for bad input: a command prints the message in one line and exits 1, a
batch job names the item and goes on, the web app answers 4xx with it."""


class InputError(ValueError):
  """Bad user input: the message names the file or field, what was found and what was expected."""


class TooLargeError(InputError):
  """An input over a size limit (bytes or pixels): the message says the size and the limit."""
