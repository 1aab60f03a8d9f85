"""Assignment 3 of the toy course: a generator, graded by a module-level marker."""


def countdown(n):
    """Yield n, n - 1, ..., 1."""
    ### BEGIN SOLUTION a3: the countdown loop
    while n > 0:
        yield n
        n -= 1
    ### END SOLUTION
