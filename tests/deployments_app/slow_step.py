"""A pipeline step that takes its time, for the model server's responsiveness test (the
server imports it when it unpickles the test's model, with the repository on its path)."""

import time


def slow_identity(x):
    time.sleep(min(3.0, len(x) / 1000))  # 1 ms per row
    return x
