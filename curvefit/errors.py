class InputError(ValueError):
    """Bad user input (file, column, value, argument).

    The message is one line that names the offending thing; the CLI prints it and exits 2.
    """
