"""One exception type for mistakes a user can fix (bad config, missing data, no checkpoint...).

`main` prints these as a single line and exits non-zero; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's input. The message names the problem and the fix."""
